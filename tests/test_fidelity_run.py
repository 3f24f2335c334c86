"""The run side of fidelity: paper mode, opt-in draft decoding, each model's zero-shot
convention in records and report, and one shared decode pass for several models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fundbench import RunConfig, run
from fundbench.api.errors import ConfigError
from fundbench.api.preprocess import PreprocessConfig
from fundbench.runs.records import iter_records, load_predictions


def _records(out) -> dict:
    return {
        (
            r["cell"]["model"],
            r["cell"]["task"],
            r["cell"]["adapter"],
            r["cell"].get("k"),
            r["cell"].get("seed"),
        ): r
        for r in iter_records(out)
        if r["status"] == "ok"
    }


def _digest(resolution: int) -> str:
    return PreprocessConfig(resolution=resolution, mode="stretch", mean=None, std=None).digest()


def test_paper_suite_builds_the_paper_mode_and_its_protocol_variant(toy_host, tmp_path):
    out = tmp_path / "paper"
    config = RunConfig(models=["toy_paper_clip"], suite="toy_paper", out=out, bootstrap=20)
    run(config, toy_host)
    records = _records(out)
    zero = next(r for k, r in records.items() if k[1] == "zero_shot")
    probe = next(r for k, r in records.items() if k[1] == "linear_probe")
    assert zero["provenance"]["preprocess_digest"] == _digest(12)  # paper_options
    assert probe["provenance"]["preprocess_digest"] == _digest(20)  # paper_protocol_options
    info = json.loads((out / "run.json").read_text())
    assert info["paper_mode"] is True
    model = info["models"]["toy_paper_clip"]
    assert model["preprocess"]["resolution"] == 12 and model["tasks"] == ["zero_shot"]
    assert [v["preprocess"]["resolution"] for v in model["task_variants"]] == [20]
    html = (out / "report.html").read_text()
    assert "paper mode" in html and "(linear_probe)" in html


def test_outside_a_paper_suite_the_defaults_apply(toy_host, tmp_path):
    out = tmp_path / "plain"
    run(
        RunConfig(
            models=["toy_paper_clip"],
            suite="toy",
            datasets=["toy_csv"],
            tasks=["linear_probe"],
            out=out,
            bootstrap=20,
        ),
        toy_host,
    )
    digests = {r["provenance"]["preprocess_digest"] for r in _records(out).values()}
    assert digests == {_digest(16)}


def test_draft_decoding_is_opt_in_recorded_and_refused_in_paper_suites(toy_host, tmp_path):
    with pytest.raises(ConfigError, match="--draft-decode .* paper suite"):
        run(
            RunConfig(
                models=["toy_clip"], suite="toy_paper", out=tmp_path / "x", draft_decode=True
            ),
            toy_host,
        )
    exact, draft = tmp_path / "exact", tmp_path / "draft"
    for out, flag in ((exact, False), (draft, True)):
        run(
            RunConfig(
                models=["toy_clip"],
                suite="toy",
                datasets=["toy_csv"],
                tasks=["linear_probe"],
                out=out,
                bootstrap=20,
                draft_decode=flag,
            ),
            toy_host,
        )
    a, b = next(iter(_records(exact).values())), next(iter(_records(draft).values()))
    assert a["provenance"]["decoding"] == "exact" and b["provenance"]["decoding"] == "draft"
    assert a["provenance"]["preprocess_digest"] != b["provenance"]["preprocess_digest"]
    assert a["fingerprint"] != b["fingerprint"]
    assert "draft (reduced-size JPEG)" in (draft / "report.html").read_text()
    exact_html = (exact / "report.html").read_text()
    assert "<td>exact</td>" in exact_html and "reduced-size JPEG" not in exact_html


def test_zero_shot_convention_is_the_models_own_and_is_recorded(toy_host, tmp_path):
    out = tmp_path / "zs"
    run(
        RunConfig(
            models=["toy_clip", "toy_paper_clip"],
            suite="toy",
            datasets=["toy_csv"],
            tasks=["zero_shot"],
            out=out,
            bootstrap=20,
        ),
        toy_host,
    )
    records = _records(out)
    clip = next(r for k, r in records.items() if k[0] == "toy_clip")
    raw = next(r for k, r in records.items() if k[0] == "toy_paper_clip")
    assert clip["provenance"]["zero_shot"]["prototype"] == "renormalized_mean"
    assert raw["provenance"]["zero_shot"] == {
        "prototype": "raw_mean",
        "logit_scale": 20.0,
        "logit_scale_rule": "fixed 20 (toy)",
    }
    html = (out / "report.html").read_text()
    assert "raw_mean, scale 20 (fixed 20 (toy))" in html


def test_several_models_share_one_decode_pass_with_identical_embeddings(
    toy_host, tmp_path, monkeypatch
):
    import fundbench.features.loader as features

    decoded = []  # workers=0: decoding happens in this process, where the spy is
    real = features.decode_image
    monkeypatch.setattr(features, "decode_image", lambda p, c=None: decoded.append(p) or real(p, c))
    together = tmp_path / "together"
    run(
        RunConfig(
            models=["toy_clip", "toy_paper_clip"],
            suite="toy",
            datasets=["toy_csv"],
            tasks=["linear_probe"],
            out=together,
            bootstrap=20,
            cache=tmp_path / "cache-a",
            workers=0,
        ),
        toy_host,
    )
    assert decoded and len(decoded) == len(set(decoded))  # each file once for both models
    apart = tmp_path / "apart"
    for name in ("toy_clip", "toy_paper_clip"):
        run(
            RunConfig(
                models=[name],
                suite="toy",
                datasets=["toy_csv"],
                tasks=["linear_probe"],
                out=apart,
                bootstrap=20,
                cache=tmp_path / "cache-b",
            ),
            toy_host,
        )
    a, b = _records(together), _records(apart)
    assert a.keys() == b.keys() and {k[0] for k in a} == {"toy_clip", "toy_paper_clip"}
    for key in a:
        np.testing.assert_array_equal(
            load_predictions(a[key]).probs, load_predictions(b[key]).probs
        )
