"""The resume check of a no-op rerun over a results folder with large test splits.

A rerun asks, for every cell, whether its record exists with the same fingerprint. Before
schema 2 that meant parsing every record, test predictions and all (JSON lists); now the
folder's fingerprint index answers and no record or sidecar is opened. The folders are built
synthetically (150 cells of one model: 5 datasets x (zero-shot, 2 linear probes, 27 few-shot
cells), 10,000 test images x 5 classes each): the new layout with the record writer, the old
one as the previous version wrote it (schema-1 JSON, predictions inline, ``indent=1``).
Times are of the engine's lookup for every cell, with the files in the page cache (a cold
cache would favour the new layout further).

Run: ``pytest benchmarks/test_bench_records.py --benchmark-only --benchmark-enable -s``.
Set FUNDBENCH_BENCH_TEST_IMAGES / FUNDBENCH_BENCH_CELLS to change the size.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from fundbench.runs import records
from fundbench.runs.records import (
    Cell,
    Predictions,
    hash_patients,
    stored_fingerprint,
    write_record,
)

N_TEST = int(os.environ.get("FUNDBENCH_BENCH_TEST_IMAGES", "10000"))
N_CELLS = int(os.environ.get("FUNDBENCH_BENCH_CELLS", "150"))
N_CLASSES = 5


def _cells() -> list[Cell]:
    cells = []
    for d in range(5):
        dataset = f"dataset_{d}"
        cells.append(Cell("m", dataset, "zero_shot", "zero_shot", "prompt_ensemble"))
        for adapter in ("tuned", "paper"):
            cells.append(Cell("m", dataset, "linear_probe", "linear_probe", adapter))
        for adapter in ("linear_probe", "tip_adapter", "clip_adapter"):
            for k in (1, 4, 16):
                for seed in range(3):
                    cells.append(Cell("m", dataset, "few_shot", "few_shot", adapter, k, seed))
    assert len(cells) >= N_CELLS
    return cells[:N_CELLS]


def _record(cell: Cell, fingerprint: str, probs: np.ndarray) -> dict:
    return {
        "cell": cell.as_dict(),
        "fingerprint": fingerprint,
        "status": "ok",
        "reason": None,
        "n_classes": N_CLASSES,
        "classes": [f"c{i}" for i in range(N_CLASSES)],
        "n_train": 1000,
        "n_test": N_TEST,
        "skipped_images": 0,
        "metrics": {
            m: {"value": 0.5, "ci_low": 0.45, "ci_high": 0.55}
            for m in ("aca", "accuracy", "macro_f1", "auroc", "kappa")
        },
        "ci": {"method": "percentile bootstrap", "n_resamples": 1000, "confidence": 0.95},
        "details": {"C": 0.316},
        "timing": {"fit_s": 1.0, "score_s": 0.1},
        "provenance": {
            "fundbench_version": "0.1.0",
            "git_commit": None,
            "plugin": {"plugin": "p", "distribution": "d", "version": "1"},
            "weights_digest": "w" * 64,
            "dataset_manifest_digest": "m" * 64,
            "preprocess_digest": "p" * 64,
            "task_digest": "t" * 64,
            "packages": {"numpy": np.__version__},
            "device": "cpu",
        },
        "contamination": {"seen": False, "evidence": []},
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """The same 150 cells in both layouts; ``fingerprints`` are what the rerun expects."""
    root = tmp_path_factory.mktemp("bench-records")
    rng = np.random.default_rng(0)
    ids = np.array([f"{i:016x}" for i in rng.permutation(10**9)[:N_TEST]])
    y = rng.integers(0, N_CLASSES, N_TEST)
    patients = hash_patients("bench", [f"P{i // 2}" for i in range(N_TEST)])
    cells, fingerprints = _cells(), {}
    new, old = root / "new", root / "old"
    start = time.perf_counter()
    for i, cell in enumerate(cells):
        probs = np.round(rng.dirichlet(np.ones(N_CLASSES), size=N_TEST), 6)
        fingerprints[cell] = f"{i:064x}"
        record = _record(cell, fingerprints[cell], probs)
        write_record(
            new,
            {**record, "schema_version": 2, "predictions": Predictions.of(ids, y, probs, patients)},
        )
        # schema 1, as fundbench wrote records before the sidecars (write_json_atomic)
        inline = {"image_ids": ids.tolist(), "y_true": y.tolist(), "probs": probs.tolist()}
        path = cell.path(old)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {**record, "schema_version": 1, "predictions": inline},
                indent=1,
                sort_keys=True,
                allow_nan=True,
            )
        )
    built_s = time.perf_counter() - start

    def size(folder: Path, pattern: str) -> int:
        return sum(p.stat().st_size for p in folder.rglob(pattern))

    return {
        "new": new,
        "old": old,
        "fingerprints": fingerprints,
        "built_s": built_s,
        "old_records_mb": size(old, "*.json") / 2**20,
        "new_records_mb": size(new, "*.json") / 2**20,
        "new_sidecars_mb": size(new, "*.npz") / 2**20,
        "new_indexes_kb": size(new, records.INDEX_NAME) / 2**10,
    }


def _old_lookup(path: Path) -> str | None:
    """The resume check before schema 2 (engine + ``read_record``): parse the whole record."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return record.get("fingerprint") if isinstance(record, dict) else None


def _check(out: Path, fingerprints: dict, lookup) -> int:
    """Every cell's resume check, as ``PairPlan.make`` does it; the number reused."""
    return sum(lookup(cell.path(out)) == fp for cell, fp in fingerprints.items())


def _fresh() -> None:
    records._INDEXES.clear()  # each round as a new process: indexes read from disk


def _best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        _fresh()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_bench_no_op_resume_check_new_vs_old_layout(benchmark, folders):
    new, old, fingerprints = folders["new"], folders["old"], folders["fingerprints"]
    n = len(fingerprints)
    assert _check(new, fingerprints, stored_fingerprint) == n
    assert _check(old, fingerprints, _old_lookup) == n

    reused = benchmark.pedantic(
        _check, args=(new, fingerprints, stored_fingerprint), setup=_fresh, rounds=20, iterations=1
    )
    assert reused == n
    new_s = _best(lambda: _check(new, fingerprints, stored_fingerprint), 20)
    old_s = _best(lambda: _check(old, fingerprints, _old_lookup), 3)

    # the new code meeting an old folder: the first rerun reads each record once and writes
    # the index; the next one reads the indexes only
    migrate_start = time.perf_counter()
    assert _check(old, fingerprints, stored_fingerprint) == n
    migrate_s = time.perf_counter() - migrate_start
    migrated_s = _best(lambda: _check(old, fingerprints, stored_fingerprint), 20)

    info = {
        "cells": n,
        "test_images_per_cell": N_TEST,
        "classes": N_CLASSES,
        "old_records_MB": round(folders["old_records_mb"], 1),
        "new_records_MB": round(folders["new_records_mb"], 2),
        "new_sidecars_MB": round(folders["new_sidecars_mb"], 1),
        "new_indexes_KB": round(folders["new_indexes_kb"], 1),
        "build_s": round(folders["built_s"], 1),
        "resume_check_old_layout_s": round(old_s, 3),
        "resume_check_new_layout_s": round(new_s, 4),
        "speedup": round(old_s / new_s, 1),
        "old_folder_first_rerun_with_new_code_s": round(migrate_s, 3),
        "old_folder_later_reruns_s": round(migrated_s, 4),
    }
    benchmark.extra_info.update(info)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in info.items()))
    assert old_s > new_s
    if N_TEST >= 10_000 and n >= 150:
        assert old_s / new_s >= 10
