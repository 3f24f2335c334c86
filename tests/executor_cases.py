"""What the executor tests share: a small run of the synthetic suite and the values that
must not depend on where its units ran."""

from __future__ import annotations

import json
from pathlib import Path

from fundbench import RunConfig
from fundbench.runs.records import iter_records

DATASETS = ["synth_glaucoma", "synth_dr"]
#: the frozen-feature protocols: where units run must not change them (fine-tuning, which
#: trains for minutes on a CPU, has its own resume and determinism tests)
TASKS = ["zero_shot", "few_shot", "linear_probe"]


def small_run(root: Path, name: str, **kw) -> RunConfig:
    """random_init on two synthetic datasets, 8 images per split, under ``root/name``;
    ``kw`` sets or overrides any option."""
    options = {
        "models": ["random_init"],
        "datasets": list(DATASETS),
        "tasks": list(TASKS),
        "limit": 8,
        "bootstrap": 10,
        "out": root / name / "out",
        "cache": root / name / "cache",
        "report": False,
    }
    return RunConfig(**{**options, **kw})


def values(out: Path) -> dict:
    """Per cell: status, fingerprint, metrics, predictions, counts."""
    return {
        json.dumps(r["cell"], sort_keys=True): {
            k: r.get(k)
            for k in ("status", "fingerprint", "metrics", "predictions", "n_train", "n_test")
        }
        for r in iter_records(out)
    }
