"""Every option and file of a run is checked before any work starts: one line on stderr that
names the culprit and what it accepts, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fundbench import RunConfig, run
from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.cli.main import main
from fundbench.models.checkpoints import read_checkpoint


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error(err: str) -> str:
    """The single error line (warnings about other installed plugins may precede it)."""
    assert "Traceback" not in err, err
    lines = [
        line
        for line in err.strip().splitlines()
        if line.strip() and not line.startswith("warning:")
    ]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A text file, a folder, a config file with a YAML error, a prompt file of the wrong
    shape, a non-UTF-8 prompt file."""
    paths = {
        "text": tmp_path / "notes.txt",
        "folder": tmp_path / "folder",
        "bad_yaml": tmp_path / "bad.yaml",
        "bad_keys": tmp_path / "keys.yaml",
        "prompts_shape": tmp_path / "prompts.yaml",
        "prompts_binary": tmp_path / "binary.yaml",
    }
    paths["text"].write_text("not a checkpoint\n")
    paths["folder"].mkdir()
    paths["bad_yaml"].write_text("weights: {flair: [unclosed\n")
    paths["bad_keys"].write_text("wieghts: {flair: x.pth}\n")
    paths["prompts_shape"].write_text("templates: 5\nclasses: {a: [b]}\n")
    paths["prompts_binary"].write_bytes(b"templates: ['\xff\xfe {}']\n")
    return paths


def _args(files: dict[str, Path], tmp_path: Path, extra: list[str]) -> list[str]:
    subs = {f"{{{k}}}": str(v) for k, v in files.items()}
    subs["{tmp}"] = str(tmp_path)
    out = []
    for a in extra:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


# (extra arguments to `fundbench run --model random_init`, text the one error line must hold)
BAD_INPUT = {
    # counts and sizes
    "batch-size": (
        ["--batch-size", "0"],
        "--batch-size 0: must be a positive integer or 'auto' (or leave it out for the model's "
        "default)",
    ),
    "batch-size-word": (
        ["--batch-size", "big"],
        "--batch-size 'big': must be a positive integer or 'auto'",
    ),
    "workers": (["--workers", "-1"], "--workers -1: must be 0 (no worker processes) or more"),
    "prefetch": (["--prefetch", "0"], "--prefetch 0: must be a whole number >= 1"),
    "precision": (["--precision", "fp8"], "--precision 'fp8': choose one of fp32, bf16, fp16"),
    "executor-option": (
        ["--executor-option", "gpus"],
        "--executor-option 'gpus': expected KEY=VALUE",
    ),
    "bootstrap": (["--bootstrap", "-5"], "--bootstrap -5: must be a positive integer"),
    "seeds": (["--seeds", "0"], "--seeds 0: must be a positive integer"),
    "limit": (["--limit", "0"], "--limit 0: must be a positive integer"),
    "shots": (["--shots", "4,0"], "--shots '4,0': expected comma-separated positive integers"),
    "wait-for-lock": (["--wait-for-lock", "-1"], "--wait-for-lock -1.0: must be a number"),
    # devices
    "device unknown": (["--device", "gpu"], "--device 'gpu': expected cpu, cuda, cuda:N or mps"),
    "device malformed": (["--device", "cuda:x"], "--device 'cuda:x': expected cpu, cuda"),
    # paths, each for its kind
    "prompts missing": (["--prompts", "{tmp}/absent.yaml"], "absent.yaml: no such file"),
    "prompts folder": (["--prompts", "{folder}"], "folder: is a folder, not a file"),
    "config missing": (["--config", "{tmp}/absent.yaml"], "--config {tmp}/absent.yaml: no such"),
    "weights missing": (
        ["--weights", "random_init={tmp}/w.pth"],
        "--weights random_init={tmp}/w.pth: file '{tmp}/w.pth' does not exist",
    ),
    "data-root missing": (["--data-root", "{tmp}/nowhere"], "nowhere: no such folder"),
    "data-root file": (["--data-root", "{text}"], "--data-root {text}: is a file, not a folder"),
    "dataset-root file": (
        ["--dataset-root", "aptos2019={text}"],
        "--dataset-root aptos2019={text}: is a file, not a folder",
    ),
    "out is a file": (["--out", "{text}"], "--out {text}: is a file, not a folder to write into"),
    "out under a file": (["--out", "{text}/sub"], "cannot create the folder: {text} is a file"),
    "cache is a file": (["--cache", "{text}"], "--cache {text}: is a file, not a folder"),
    # files parsed up front
    "config bad yaml": (["--config", "{bad_yaml}"], "bad.yaml line 2: invalid YAML"),
    "config bad keys": (["--config", "{bad_keys}"], "keys.yaml: unknown key(s) ['wieghts']"),
    "prompts shape": (["--prompts", "{prompts_shape}"], "prompts.yaml: 'templates' must be"),
    "prompts not utf-8": (["--prompts", "{prompts_binary}"], "binary.yaml: not UTF-8 text"),
    # NAME=VALUE pairs
    "weights pair": (["--weights", "random_init="], "--weights 'random_init=': expected PATH"),
    "dataset-root pair": (["--dataset-root", "aptos2019"], "'aptos2019': expected NAME=DIR"),
    "model-arg pair": (["--model-arg", "arch=resnet18"], "'arch=resnet18': expected MODEL.OPTION"),
    "model-arg value": (
        ["--model-arg", "random_init.arch=[1"],
        "--model-arg random_init.arch=[1: VALUE '[1' is not valid YAML",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUT))
def test_bad_input_is_one_line_naming_the_culprit_before_any_work(kind, files, tmp_path, capsys):
    extra, expected = BAD_INPUT[kind]
    out_given = "--out" in extra
    out = tmp_path / "results"
    args = ["run", "--model", "random_init", *_args(files, tmp_path, extra)]
    if not out_given:
        args += ["--out", str(out)]
    code, stdout, err = _cli(capsys, *args)
    assert code == 2, err
    line = one_error(err)
    assert _args(files, tmp_path, [expected])[0] in line, line
    assert stdout == ""
    assert not out.exists(), "nothing may be written when an input is bad"


@pytest.mark.parametrize("device, hint", [("cuda", "CUDA"), ("cuda:0", "CUDA"), ("mps", "MPS")])
def test_a_device_this_machine_lacks_is_refused(device, hint, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    code, _, err = _cli(
        capsys, "run", "--model", "random_init", "--device", device, "--out", tmp_path / "o"
    )
    assert code == 2
    assert f"--device {device}: " in one_error(err) and f"{hint}" in err
    assert "not available on this machine" in err


def test_a_cuda_index_beyond_the_gpus_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code, _, err = _cli(
        capsys, "run", "--model", "random_init", "--device", "cuda:2", "--out", tmp_path / "o"
    )
    assert code == 2
    assert "--device cuda:2: this machine has 2 CUDA device(s), cuda:0 to cuda:1" in one_error(err)


def test_bad_option_through_the_real_entry_point_names_it_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fundbench.cli", "run", "--model", "random_init"]
        + ["--bootstrap", "-5", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    line = one_error(proc.stderr)
    assert "--bootstrap -5: must be a positive integer" in line
    assert "n_resamples" not in proc.stderr and proc.stdout == ""


# -- the Python API gets the same checks -------------------------------------------------------


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"batch_size": 0}, "--batch-size 0: must be a positive integer"),
        ({"bootstrap": 2.5}, "--bootstrap 2.5: must be a positive integer"),
        ({"seeds": True}, "--seeds True: must be a positive integer"),
        ({"shots": [1, -2]}, "--shots '1,-2'"),
        ({"device": "cuda1"}, "--device 'cuda1': expected cpu, cuda, cuda:N or mps"),
        ({"datasets": "toy_csv"}, "--dataset: expected a list of names"),
        ({"models": []}, "--model: give at least one model name"),
        ({"dataset_roots": {"toy_csv": "/no/such/dir"}}, "toy_csv=/no/such/dir: no such folder"),
        ({"weights": {"toy_clip": "/no/w.pth"}}, "file '/no/w.pth' does not exist"),
        ({"model_options": {"toy_clip": 3}}, "--model-arg toy_clip: expected a mapping"),
    ],
)
def test_the_python_api_is_validated_first(change, expected, toy_host, tmp_path):
    out = tmp_path / "results"
    config = RunConfig(**{"models": ["toy_clp"], "suite": "toy", "out": out, **change})
    with pytest.raises(ConfigError) as info:
        run(config, toy_host)  # the model name is misspelt too: options are checked first
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()


def test_prompt_file_must_cover_every_dataset_before_any_work(toy_host, tmp_path, monkeypatch):
    import fundbench.runs.engine

    def no_work(*args, **kwargs):
        raise AssertionError("models were built before the prompt file was checked")

    monkeypatch.setattr(fundbench.runs.engine, "_built", no_work)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("datasets:\n  toy_oct: {templates: ['{}'], classes: {red: [r]}}\n")
    out = tmp_path / "results"
    with pytest.raises(ConfigError, match="no prompts for dataset 'toy_csv' under 'datasets'"):
        run(RunConfig(models=["toy_clip"], suite="toy", out=out, prompts=prompts), toy_host)
    assert not out.exists()


def test_config_file_folders_are_checked(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("dataset_roots: {aptos2019: absent}\n")
    code, _, err = _cli(
        capsys,
        "run",
        "--model",
        "random_init",
        "--dataset",
        "aptos2019",
        "--config",
        config,
        "--out",
        tmp_path / "o",
    )
    assert code == 2
    assert f"{config}: dataset_roots: aptos2019: {tmp_path / 'absent'}: no such folder" in (
        one_error(err)
    )


# -- a run with --dataset-root, and what a weights file that is not a checkpoint says ---------


@pytest.fixture(scope="module")
def aptos_run(tmp_path_factory):
    from fake_layouts.dr import build_aptos2019

    base = tmp_path_factory.mktemp("aptos")
    build_aptos2019(base / "official")
    root, out = base / "official" / "aptos2019", base / "results"
    code = main(
        ["run", "--model", "random_init", "--dataset", "aptos2019", "--dataset-root",
         f"aptos2019={root}", "--task", "linear_probe", "--limit", "4", "--bootstrap", "10",
         "--out", str(out)]
    )  # fmt: skip
    return code, root, out


def test_dataset_root_run_writes_run_json_with_the_root_as_a_string(aptos_run):
    code, root, out = aptos_run
    assert code == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["dataset_roots"] == {"aptos2019": str(root)}
    assert "aptos2019" in info["datasets"]
    assert any((out / "records" / "random_init" / "aptos2019").rglob("*.json"))


def test_weights_file_that_is_not_a_checkpoint_is_one_line(files, tmp_path, capsys):
    code, _, err = _cli(
        capsys, "run", "--model", "flair", "--weights", f"flair={files['text']}",
        "--dataset", "synth_dr", "--limit", "2", "--out", tmp_path / "o",
    )  # fmt: skip
    assert code == 2
    line = one_error(err)
    assert f"{files['text']}: not a PyTorch/safetensors checkpoint (a text file" in line
    assert (
        "IndexError" not in err
        and "pop from empty list" not in err
        and "failed to build" not in err
    )


def _zip_checkpoint(path: Path) -> bytes:
    torch.save({"w": torch.zeros(4)}, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("notes.pth", b"hello\nworld\n", "a text file starting 'hello'"),
        ("empty.pth", b"", "an empty file"),
        ("truncated.pth", "zip-half", "zip archive"),
        ("opcodes.pth", b"\x80\x02" + b"\xff" * 20, "Unsupported operand"),
        ("random.bin", bytes(range(256)) * 2, "it starts with the bytes 00 01 02"),
    ],
)
def test_read_checkpoint_says_a_damaged_file_is_not_a_checkpoint(name, content, reason, tmp_path):
    path = tmp_path / name
    if content == "zip-half":
        whole = _zip_checkpoint(tmp_path / "whole.pth")
        content = whole[: len(whole) // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert (
        message.startswith(f"{path}: not a PyTorch/safetensors checkpoint (")
        and "\n" not in message
    )
    assert reason in message


def test_read_checkpoint_tells_the_format_by_content(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, tmp_path / "named.bin")  # safetensors under another name
    assert torch.equal(read_checkpoint(tmp_path / "named.bin")["w"], torch.ones(2))
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(tmp_path / "legacy.pt")["w"], torch.ones(2))


# -- leaderboard: the baseline is read before anything is printed ------------------------------


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not a leaderboard JSON file"),
        ('{"schema": "other"}', "schema is 'other'"),
        (None, "baseline file does not exist"),
    ],
)
def test_unreadable_baseline_fails_before_the_board_is_printed(
    aptos_run, content, expected, tmp_path, capsys
):
    _, _, results = aptos_run
    baseline = tmp_path / "BAD.json"
    if content is not None:
        baseline.write_text(content)
    code, stdout, err = _cli(capsys, "leaderboard", results, "--baseline", baseline)
    assert code == 2
    assert stdout == "", "nothing may be printed before the baseline is known to be good"
    line = one_error(err)
    assert str(baseline) in line and expected in line
    code, stdout, _ = _cli(capsys, "leaderboard", results)
    assert code == 0 and "random_init" in stdout  # the same results do make a board
