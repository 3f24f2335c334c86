"""KeepFIT V1 from its released state dicts: FLAIR's network plus the attention module loads
strictly, embeddings match an independent recomputation of the FLAIR part (keepfit.md
section 3), and FLAIR, V1 and V2 files are not interchangeable."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from fundbench_flair.model import FLAIRModel
from fundbench_flair.testing import (
    random_state,
    reference_text,
    reference_vision,
    with_position_ids,
    write_bert_folder,
)
from fundbench_flair.text import TOKENIZER_ENV
from fundbench_keepfit_v2.v1 import KeepFITV1Model, KeepFITV1Network

from fundbench.api.errors import CheckpointError
from fundbench.runs.records import iter_records

TEXTS = ["normal", "a few small red dots", "many haemorrhages and exudates with signs of lesion"]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    return write_bert_folder(tmp_path_factory.mktemp("bio_clinicalbert"))


@pytest.fixture(scope="module")
def flair_files(tmp_path_factory):
    """FLAIR's 2023 raw file (521 keys, with position_ids) and a recent one (520)."""
    root = tmp_path_factory.mktemp("flair")
    state = random_state()
    torch.save(with_position_ids(state), root / "flair_resnet.pth")
    torch.save(state, root / "flair_recent.pth")
    return {"legacy": root / "flair_resnet.pth", "recent": root / "flair_recent.pth"}


@pytest.fixture(scope="module")
def v1_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keepfit_v1") / "KeepFIT (flair+MM).pth"
    state = with_position_ids(random_state(KeepFITV1Network, seed=3))
    torch.save(state, path)
    return path, state


def test_keepfit_v1_loads_and_matches_the_flair_part(v1_file, bert_folder):
    path, state = v1_file
    assert len(state) == 525  # FLAIR's 520 + position_ids + attention.W_{q,k,v,o}
    model = KeepFITV1Model(weights=str(path), tokenizer=str(bert_folder))
    assert torch.equal(model.net.attention.W_o.weight, state["attention.W_o.weight"])
    images = torch.rand(2, 3, 512, 512)
    assert torch.allclose(model.encode_images(images), reference_vision(state, images), atol=1e-5)
    assert torch.allclose(
        model.encode_texts(TEXTS), reference_text(state, bert_folder, TEXTS, 256), atol=1e-5
    )
    assert model.prompt_templates == ("A fundus photograph of {}",)
    assert "MM-Retinal" in model.pretraining_datasets


def test_flair_and_keepfit_files_are_not_interchangeable(v1_file, flair_files):
    from fundbench_keepfit_v2.v2 import KeepFITV2Model

    with pytest.raises(CheckpointError, match=r"4 missing \(e\.g\. attention\.W_q\.weight"):
        KeepFITV1Model(weights=str(flair_files["recent"]))
    with pytest.raises(CheckpointError, match="4 unexpected"):
        FLAIRModel(weights=str(v1_file[0]))
    with pytest.raises(CheckpointError, match="--model keepfit_v1"):
        KeepFITV2Model(weights=str(v1_file[0]))


@pytest.mark.slow
def test_cli_runs_flair_and_keepfit_v1_on_the_embedded_suite(
    flair_files, v1_file, bert_folder, tmp_path
):
    out = tmp_path / "out"
    args = [
        "--model",
        "flair",
        "--model",
        "keepfit_v1",
        "--weights",
        f"flair={flair_files['legacy']}",
        "--weights",
        f"keepfit_v1={v1_file[0]}",
        "--dataset",
        "synth_dr",
        "--task",
        "zero_shot",
        "--task",
        "linear_probe",
        "--limit",
        "4",
        "--bootstrap",
        "20",
        "--out",
        str(out),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "fundbench.cli", "run", *args],
        capture_output=True,
        text=True,
        env={**os.environ, TOKENIZER_ENV: str(bert_folder)},
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = list(iter_records(out))
    by_model = {m: [r for r in records if r["cell"]["model"] == m] for m in ("flair", "keepfit_v1")}
    digests = {
        "flair": hashlib.sha256(flair_files["legacy"].read_bytes()).hexdigest(),
        "keepfit_v1": hashlib.sha256(v1_file[0].read_bytes()).hexdigest(),
    }
    for name, recs in by_model.items():
        assert {r["cell"]["protocol"] for r in recs} == {"zero_shot", "linear_probe"}
        assert all(r["status"] == "ok" for r in recs), [r.get("reason") for r in recs]
        assert {r["provenance"]["weights_digest"] for r in recs} == {digests[name]}
        zs = [r for r in recs if r["cell"]["protocol"] == "zero_shot"]
        assert zs[0]["provenance"]["prompt_templates"] == ["A fundus photograph of {}"]
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["models"]["keepfit_v1"]["weights_source"] == "command line"
