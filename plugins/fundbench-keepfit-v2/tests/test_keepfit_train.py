"""KeepFIT V2 training on a toy folder: stage 1 learns, resume is exact (also after kill -9),
two gloo processes match one process, and the GPU check runs on the CPU."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
from fundbench_keepfit_v2 import gpu_check
from fundbench_keepfit_v2.config import make_config
from fundbench_keepfit_v2.data import load_training_data
from fundbench_keepfit_v2.testing import TINY_SHAPES, make_toy_folder
from fundbench_keepfit_v2.train import LAST, LOG, SUMMARY, run

from fundbench.api.errors import ConfigError

NO_DROPOUT = {"text.dropout": "0", "model.attention_dropout": "0", "model.decoder_dropout": "0"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_folder(tmp_path_factory.mktemp("keepfit_train") / "toy")


def _config(toy, **overrides):
    return make_config(
        "tiny",
        {**TINY_SHAPES, **{k.replace("__", "."): str(v) for k, v in overrides.items()}},
        data=[str(toy)],
    )


def _steps(out) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    return {r["step"]: r for r in rows if "step" in r}


def _assert_same_curve(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    for step in a:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=tol, rel=tol), step
        for term, value in a[step]["terms"].items():
            assert b[step]["terms"][term] == pytest.approx(value, abs=tol, rel=tol), (step, term)


def test_stage1_lowers_heldout_mlm_loss(toy, tmp_path):
    config = _config(
        toy,
        stage1__steps=60,
        stage1__batch_size=16,
        stage1__lr=3e-3,
        stage1__warmup_steps=5,
        stage2__steps=1,
    )
    run(config, tmp_path, show_progress=False)
    summary = json.loads((tmp_path / SUMMARY).read_text())
    before, after = summary["mlm_holdout_before"], summary["mlm_holdout_after"]
    assert after < before - 0.5, (before, after)
    events = [json.loads(x) for x in (tmp_path / LOG).read_text().splitlines() if "event" in x]
    assert [e["when"] for e in events] == ["before", "after"]


def test_training_uses_train_split_only(toy, tmp_path):
    table = pd.read_csv(toy / "toy_cfp.csv")
    held = table.head(6).assign(split=["val"] * 3 + ["test"] * 3)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "images").symlink_to(toy / "images")
    pd.concat([held, table.iloc[6:]]).to_csv(folder / "mixed_cfp.csv", index=False)
    data = load_training_data(make_config("tiny", data=[str(folder)]))
    used = {p.rsplit("/", 1)[-1] for p in data.paths}
    assert not used & {p.rsplit("/", 1)[-1] for p in held["image"]}
    assert len(data.cat_image) == len(table) - 6 and len(data.elite_image) == len(table) - 6
    assert data.sources == ["mixed"]


@pytest.mark.parametrize("stop_after", [2, 5])
def test_resume_repeats_the_uninterrupted_loss_curve(toy, tmp_path, stop_after):
    straight = _config(toy, train__checkpoint_every=2)
    run(straight, tmp_path / "straight", show_progress=False)
    first = _config(toy, train__checkpoint_every=2, train__stop_after=stop_after)
    path = run(first, tmp_path / "split", show_progress=False)
    assert path.name == LAST
    assert max(_steps(tmp_path / "split")) == stop_after
    with pytest.raises(ConfigError, match="--resume"):
        run(straight, tmp_path / "split", show_progress=False)
    final = run(straight, tmp_path / "split", resume=True, show_progress=False)
    assert final.name == "keepfit_v2.pt"
    _assert_same_curve(_steps(tmp_path / "straight"), _steps(tmp_path / "split"))


def _cli(args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "fundbench.cli", "train", "keepfit_v2", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _set_args(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += ["--set", f"{k}={v}"]
    return out


def test_kill_9_then_resume_is_exact(toy, tmp_path):
    overrides = {**TINY_SHAPES, "stage2.steps": "80", "train.checkpoint_every": "3"}
    out = tmp_path / "killed"
    proc = _cli(["--preset", "tiny", "--data", str(toy), "--out", str(out), *_set_args(overrides)])
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if (out / LAST).exists() and (out / LOG).exists() and len(_steps(out)) >= 8:
                break
            if proc.poll() is not None:
                pytest.fail(f"training ended before it could be killed: {proc.stdout.read()}")
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "keepfit_v2.pt").exists()
    config = make_config("tiny", overrides, data=[str(toy)])
    run(config, out, resume=True, show_progress=False)
    run(config, tmp_path / "straight", show_progress=False)
    _assert_same_curve(_steps(tmp_path / "straight"), _steps(out))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(toy, tmp_path):
    overrides = {**TINY_SHAPES, **NO_DROPOUT, "stage1.steps": "3", "stage2.steps": "4"}
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(
            _cli(
                [
                    "--preset",
                    "tiny",
                    "--data",
                    str(toy),
                    "--out",
                    str(tmp_path / "ddp"),
                    *_set_args(overrides),
                ],
                env=env,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    run(make_config("tiny", overrides, data=[str(toy)]), tmp_path / "single", show_progress=False)
    single, ddp = _steps(tmp_path / "single"), _steps(tmp_path / "ddp")
    assert len(single) == 7
    _assert_same_curve(single, ddp, tol=2e-4)
    summary = json.loads((tmp_path / "ddp" / SUMMARY).read_text())
    assert summary["world_size"] == 2


def test_gpu_check_runs_on_cpu_with_tiny_shapes(tmp_path, capsys):
    path = tmp_path / "check.json"
    assert (
        gpu_check.main(["--device", "cpu", "--steps", "2", "--tiny-shapes", "--json", str(path)])
        == 0
    )
    result = json.loads(path.read_text())
    assert result["device"] == "cpu" and result["tiny_shapes"] is True
    assert len(result["losses"]) == 2 and result["images_per_s"] > 0
    assert result["flops"]["step_tflops"] > 0 and result["fraction_of_peak"] is None
    printed = capsys.readouterr().out
    assert "images/s" in printed and "loss trend" in printed and "assumption" in printed


def test_peak_table_lookup():
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == (989.0, "H100 SXM")
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe")[1] == "H100 PCIe"
    assert gpu_check.peak_tflops("NVIDIA H200")[0] == 989.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert gpu_check.peak_tflops("Some GPU")[0] is None
