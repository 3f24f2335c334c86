"""KeepFIT V2 training on a toy folder: stage 1 learns, resume is exact (also after kill -9),
two gloo processes match one process, and the GPU check runs on the CPU."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from fundbench_keepfit_v2 import gpu_check
from fundbench_keepfit_v2 import train as train_mod
from fundbench_keepfit_v2.config import make_config
from fundbench_keepfit_v2.data import load_training_data
from fundbench_keepfit_v2.testing import TINY_SHAPES, HostSyncCounter, make_toy_folder
from fundbench_keepfit_v2.train import LAST, LOG, SUMMARY, Trainer, run

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


def test_resume_with_other_levers_and_loader_workers_repeats_the_curve(toy, tmp_path):
    """The perf levers are outside the digest: a run may resume with others. Levers that are
    bit-identical on CPU (foreach vs loop AdamW, loader worker processes, pinning) give
    exactly the uninterrupted run's per-step losses."""
    straight = _config(toy, train__checkpoint_every=2)
    assert straight.perf.fused_adamw and straight.perf.loader_workers == 0
    run(straight, tmp_path / "straight", show_progress=False)
    first = _config(
        toy,
        train__checkpoint_every=2,
        train__stop_after=5,
        perf__fused_adamw="false",
        perf__loader_workers=2,
        perf__pin_memory="true",
    )
    assert run(first, tmp_path / "split", show_progress=False).name == LAST
    again = _config(toy, train__checkpoint_every=2, perf__loader_workers=1)
    run(again, tmp_path / "split", resume=True, show_progress=False)
    _assert_same_curve(_steps(tmp_path / "straight"), _steps(tmp_path / "split"), tol=0)
    summary = json.loads((tmp_path / "split" / SUMMARY).read_text())
    assert summary["perf"]["loader_workers"] == 1 and summary["perf"]["attention"] == "sdpa"


def test_optimizer_lever_and_state_across_implementations():
    layer = torch.nn.Linear(3, 2)
    params = list(layer.parameters())
    default, _ = train_mod.make_optimizer(params, 1e-2, 0.1, 0, 10)
    fused, _ = train_mod.make_optimizer(params, 1e-2, 0.1, 0, 10, fused=True)
    assert train_mod.optimizer_kind(default) == "default"
    assert train_mod.optimizer_kind(fused) == "foreach"  # fused kernels need CUDA
    layer(torch.ones(4, 3)).sum().backward()
    fused.step()
    state = fused.state_dict()
    train_mod.load_optimizer_state(default, state)
    assert train_mod.optimizer_kind(default) == "default"  # this run's choice is kept
    assert torch.equal(default.state[params[0]]["exp_avg"], fused.state[params[0]]["exp_avg"])
    assert [g["weight_decay"] for g in default.param_groups] == [0.1, 0.0]


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


def test_gpu_check_runs_tiny_end_to_end_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu"
    args = ["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--out", str(out)]
    assert gpu_check.main([*args, "--profile-steps", "2"]) == 0
    result = json.loads((out / "gpu_check.json").read_text())
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [result["summary"]]  # the one-line summary
    assert (out / "gpu_check.log").read_text().strip().endswith(result["summary"])
    assert result["device"] == "cpu" and result["tiny_shapes"] is True
    assert result["mfu"] is None and "no bf16 peak" in result["mfu_reason"]
    assert result["flops_per_step"] > 0 and result["flops_by_op"]["aten.convolution_backward"] > 0
    # forward + backward counted op by op: close to the old closed form (3 x forward)
    assert 0.5 < result["flops_per_step"] / result["flops_per_step_analytic"] < 2
    on, off = result["levers_on"], result["levers_off"]
    for entry in (on, off):
        assert entry["status"] == "ok", entry["status"]
        assert entry["step_s"] > 0 and entry["images_per_s"] > 0 and entry["flops_per_step"] > 0
        assert entry["mfu"] is None and entry["mfu_reason"]
    assert result["flops_per_step"] == on["flops_per_step"] > off["flops_per_step"]
    assert (on["batch"]["categorical"], off["batch"]["categorical"]) == (4, 2)
    assert (on["in_use"]["attention"], off["in_use"]["attention"]) == ("sdpa", "eager")
    assert (on["in_use"]["optimizer"], off["in_use"]["optimizer"]) == ("foreach", "default")
    assert (on["in_use"]["sync_every"], off["in_use"]["sync_every"]) == ("end", 1)
    assert on["in_use"]["loader_workers"] >= 1 and off["in_use"]["loader_workers"] == 0
    ablation = {e["lever"]: e for e in result["ablation"]}
    assert list(ablation) == list(gpu_check.LEVERS)
    for lever in ("compile", "bf16", "tf32", "cudnn_benchmark"):
        assert ablation[lever]["status"] == on["levers"][lever] == "skipped: needs CUDA"
    for lever in ("channels_last", "sdpa", "fused_adamw", "loader", "sync_free", "batch"):
        entry = ablation[lever]
        assert entry["status"] == "ok", (lever, entry["status"])
        assert entry["step_s"] > 0 and entry["speedup_from_lever"] > 0
        assert entry["reference"] == "levers_on"
    assert ablation["loader"]["in_use"]["loader_workers"] == 0
    assert ablation["sdpa"]["in_use"]["attention"] == "eager"
    assert ablation["batch"]["batch"]["categorical"] == 2
    profile = result["profile"]
    assert profile["steps"] == 2 and 0 < len(profile["top_ops"]) <= 10
    assert all(r["name"] and r["ms_per_step"] >= 0 for r in profile["top_ops"])
    phases = on["phases"]
    assert {"data_copy_augment", "forward", "backward", "optimizer"} <= set(phases["share"])
    assert sum(phases["share"].values()) == pytest.approx(1.0)
    assert phases["ms_per_step"]["forward"] > 0 and 0 <= phases["data_loading_share"] < 1
    assert result["host_syncs"]["count"] == 0, result["host_syncs"]
    assert len(result["losses"]) == 3 and all(math.isfinite(x) for x in result["losses"])


def test_gpu_check_records_errors_and_the_time_budget(monkeypatch):
    check = gpu_check.Check(torch.device("cpu"), tiny=True, batch=None)
    on = gpu_check.lever_settings(True, torch.device("cpu"), 4, 2, workers=0)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore text")

    monkeypatch.setattr(gpu_check.measure, "prepare_model", out_of_memory)
    entry = check.measure("no_bf16", on, steps=1, warmup=1)
    assert entry["status"] == "error: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    monkeypatch.undo()
    result = gpu_check.run_check("cpu", tiny=True, steps=1, warmup=1, budget_s=0, profile_steps=1)
    assert result["levers_on"]["status"] == "ok"  # always runs
    assert result["levers_off"]["status"].startswith("skipped: time budget")
    statuses = {e["lever"]: e["status"] for e in result["ablation"]}
    assert statuses["sdpa"].startswith("skipped: time budget")
    assert statuses["bf16"] == "skipped: needs CUDA"
    assert result["speedup_images_per_s"] is None
    assert "levers off" not in gpu_check.summary_line(result, Path("x.json"))


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_gpu_check_cuda_code_against_stand_ins(monkeypatch):
    """The check's CUDA-only code (events, sync debug mode, device profile, backend
    settings) run against stand-ins here, so a GPU run does not meet it for the first time."""

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = None

        def record(self):
            self.t = time.perf_counter()

        def elapsed_time(self, other):
            return (other.t - self.t) * 1000

    modes = []
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    cuda = torch.device("cuda", 0)
    timer = gpu_check.PhaseTimer(cuda=True)
    for _ in range(2):
        for mark in ("wait", "copy", "forward", "backward", "optimizer", "end"):
            timer.mark(mark)
            time.sleep(0.002)
    phases = timer.summary(2)
    assert phases["clock"] == "CUDA events"
    assert sum(phases["share"].values()) == pytest.approx(1.0)
    assert phases["ms_per_step"]["forward"] >= 1.5 and phases["host_wait_for_batch_ms_per_step"] > 0
    check = gpu_check.Check.__new__(gpu_check.Check)  # these methods use no model
    x = torch.randn(32, 32)

    def step(i):
        (x @ x).sum()
        if i == 1:
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)

    syncs = check._sync_check(step, 0, cuda, opt=None)
    assert syncs["count"] == 1 and modes == ["warn", 0]
    assert "set_sync_debug_mode" in syncs["method"]
    profile = check._profile(lambda i: (x @ x).sum(), 0, 2, cuda)
    assert profile["sorted_by"] == "self_device_time_total" and profile["top_ops"]
    assert isinstance(profile["top_kernels"], list)
    precision, benchmark = torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    perf = make_config("paper").perf
    with train_mod.backend_settings(perf, cuda):
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.benchmark is True
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark) == (
        precision,
        benchmark,
    )


def test_peak_table_lookup():
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == (989.0, "H100 SXM")
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe")[1] == "H100 PCIe"
    assert gpu_check.peak_tflops("NVIDIA H200")[0] == 989.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert gpu_check.peak_tflops("NVIDIA GH200 480GB")[0] == 989.0
    peak, reason = gpu_check.peak_tflops("Some GPU")
    assert peak is None and "unknown card" in reason


def _count_host_syncs(monkeypatch, config, out, sync_in_step: bool = False):
    """Train ``config`` with a :class:`HostSyncCounter` around every stage loop; the log
    flush and checkpoints (meant to synchronise) are paused. Returns (counter, flushes)."""
    opts = []
    counter = HostSyncCounter(
        exempt=lambda: [s["step"] for o in opts for s in o.state.values() if "step" in s]
    )
    real_make, real_stage = train_mod.make_optimizer, Trainer._run_stage
    real_flush, real_checkpoint = Trainer._flush, Trainer._checkpoint
    real_step = train_mod.optimizer_step
    flushes = []

    def make_optimizer(*args, **kwargs):
        opt, sched = real_make(*args, **kwargs)
        opts.append(opt)
        return opt, sched

    def run_stage(self, *args, **kwargs):
        with counter:
            return real_stage(self, *args, **kwargs)

    def flush(self, name, stage_step, meter, window_s):
        with counter.paused():
            flushes.append((name, stage_step, len(meter)))
            return real_flush(self, name, stage_step, meter, window_s)

    def checkpoint(self, *args, **kwargs):
        with counter.paused():
            return real_checkpoint(self, *args, **kwargs)

    def optimizer_step(*args, **kwargs):  # the old loop's per-step float(loss) etc.
        grad_norm, lr = real_step(*args, **kwargs)
        float(grad_norm)
        return grad_norm, lr

    monkeypatch.setattr(train_mod, "make_optimizer", make_optimizer)
    monkeypatch.setattr(Trainer, "_run_stage", run_stage)
    monkeypatch.setattr(Trainer, "_flush", flush)
    monkeypatch.setattr(Trainer, "_checkpoint", checkpoint)
    if sync_in_step:
        monkeypatch.setattr(train_mod, "optimizer_step", optimizer_step)
    run(config, out, show_progress=False)
    return counter, flushes


def test_training_steps_never_wait_for_the_device_between_log_points(toy, tmp_path, monkeypatch):
    # log every 4 steps, checkpoint every 3: flushes at 3, 4 | 6, 8, 9, 12, 13
    config = _config(
        toy, stage1__steps=4, stage2__steps=9, train__log_every=4, train__checkpoint_every=3
    )
    counter, flushes = _count_host_syncs(monkeypatch, config, tmp_path / "quiet")
    assert counter.count == 0, counter.report()
    assert flushes == [
        ("stage1", 3, 3),
        ("stage1", 4, 1),
        ("stage2", 2, 2),
        ("stage2", 4, 2),
        ("stage2", 5, 1),
        ("stage2", 8, 3),
        ("stage2", 9, 1),
    ]
    logged = _steps(tmp_path / "quiet")
    assert sorted(logged) == [3, 4, 6, 8, 9, 12, 13]
    assert logged[12]["window"] == 3 and logged[12]["stage_step"] == 8
    assert all(
        math.isfinite(r["loss"]) and r["images_per_s"] > 0
        for r in logged.values()
        if r["stage"] == "stage2"
    )
    # the counter sees a sync in the step when there is one (the test can fail)
    counter, _ = _count_host_syncs(monkeypatch, config, tmp_path / "noisy", sync_in_step=True)
    assert counter.count == 13 and "aten._local_scalar_dense" in counter.report()


def test_sync_counter_catches_the_usual_host_reads():
    x = torch.arange(4.0)
    with HostSyncCounter() as counter:
        float(x.sum())
        x.tolist()
        x[x > 1]  # boolean indexing: nonzero
        with counter.paused():
            x.sum().item()
        x.exp().sum()  # no sync
    assert [name for name, _ in counter.calls] == [
        "aten._local_scalar_dense",
        "Tensor.tolist",
        "aten.index with a boolean mask",
    ]
    assert torch.Tensor.tolist is not None and x.tolist() == [0.0, 1.0, 2.0, 3.0]
