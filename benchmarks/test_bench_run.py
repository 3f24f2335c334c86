"""Whole-run performance on the embedded suite, measured in one process:

* harness overhead: a cold ``fundbench run`` (all protocols, all seeds) against the model's
  own forward passes over the same images (pre-decoded tensors, same batch size), both as a
  separate pass right after the run and as the time the run itself spent in the model;
* warm rerun: the same command again, every cell already recorded.

Run: ``pytest benchmarks/test_bench_run.py --benchmark-only --benchmark-enable -s``
(minutes on 2 cores). Set FUNDBENCH_BENCH_MODEL to benchmark another model.
"""

from __future__ import annotations

import os
import time

import torch

from fundbench import RunConfig, run
from fundbench.api.images import open_image
from fundbench.data.datasets import load_dataset
from fundbench.host.loading import get_host
from fundbench.models.build import build_model

MODEL = os.environ.get("FUNDBENCH_BENCH_MODEL", "random_init")


def _forward_only(model, datasets, batch_size: int) -> float:
    """Seconds spent in ``encode_images`` alone over every image of the suite."""
    tensors = [model.preprocess(open_image(p)) for d in datasets for p in d.table["path"]]
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(tensors), batch_size):
            batch = torch.stack(tensors[i : i + batch_size])
            start = time.perf_counter()
            model.encode_images(batch)
            total += time.perf_counter() - start
    return total


def test_bench_cold_run_overhead_and_warm_rerun(benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("FUNDBENCH_CACHE", str(tmp_path / "cache"))
    host = get_host()
    config = RunConfig(models=[MODEL], out=tmp_path / "out", report=False)
    suite = host.suites.get("synthfundus").obj
    datasets = [load_dataset(n, host=host) for n in suite.datasets]
    model = build_model(host.models.get(MODEL), {}, config.device)

    cold = benchmark.pedantic(run, args=(config, host), rounds=1, iterations=1)
    cold_s = cold.wall_s
    # Measured right after the cold run so both see the same machine state.
    forward_s = _forward_only(model, datasets, model.default_batch_size)
    start = time.perf_counter()
    warm = run(config, host)
    warm_s = time.perf_counter() - start

    images = sum(len(d.table) for d in datasets)
    extraction_s = sum(s["total_s"] for s in cold.extraction.values())
    in_run_forward_s = sum(s["forward_s"] for s in cold.extraction.values())
    info = {
        "model": MODEL,
        "images": images,
        "forward_only_s": round(forward_s, 2),
        "cold_run_s": round(cold_s, 2),
        "cold_extraction_s": round(extraction_s, 2),
        "extraction_overhead": round(extraction_s / forward_s - 1, 3),
        "cold_run_overhead": round(cold_s / forward_s - 1, 3),
        "in_run_forward_s": round(in_run_forward_s, 2),
        "cold_run_overhead_vs_in_run_forward": round(cold_s / in_run_forward_s - 1, 3),
        "warm_rerun_s": round(warm_s, 2),
        "warm_speedup": round(cold_s / warm_s, 1),
        "cells": cold.computed + cold.not_applicable,
    }
    benchmark.extra_info.update(info)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in info.items()))
    assert warm.computed == 0 and warm.reused == cold.computed + cold.not_applicable
    assert info["warm_speedup"] >= 10
