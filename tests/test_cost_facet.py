"""The cost facet: each model's size, extraction throughput and peak memory, in the records
and the report."""

from __future__ import annotations

import toy_plugin

from fundbench import RunConfig, run
from fundbench.runs.records import iter_records


def _run(host, out, cache):
    config = RunConfig(
        models=["toy_clip"],
        datasets=["toy_csv"],
        tasks=["linear_probe"],
        out=out,
        cache=cache,
        bootstrap=20,
    )
    return run(config, host=host)


def test_records_and_report_carry_the_cost_facet(toy_host, tmp_path):
    cache = tmp_path / "cache"
    _run(toy_host, tmp_path / "a", cache)
    (record, *_) = list(iter_records(tmp_path / "a"))
    cost = record["cost"]
    # ToyClip holds a [192, 32] projection and three 32-d colour vectors
    assert cost["embed_dim"] == toy_plugin.DIM and cost["parameters"] == 192 * 32 + 3 * 32
    assert cost["images_per_s"] > 0 and cost["peak_memory_mib"] > 0 and cost["device"] == "cpu"
    html = (tmp_path / "a" / "report.html").read_text()
    assert 'id="cost"' in html and "img/s" in html and "0.01 M" in html

    _run(toy_host, tmp_path / "b", cache)  # every embedding cached: nothing was measured
    (again, *_) = list(iter_records(tmp_path / "b"))
    assert (
        again["cost"]["images_per_s"] is None and again["cost"]["parameters"] == cost["parameters"]
    )
    assert "all embeddings read from the cache" in (tmp_path / "b" / "report.html").read_text()
