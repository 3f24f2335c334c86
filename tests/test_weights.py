"""Where weights come from: --weights beats the config file beats FUNDBENCH_WEIGHTS_<NAME>;
models that need weights fail before any work when none is given; the core checkpoint
helpers read safely and check strictly."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from fundbench.api.errors import CheckpointError, ConfigError
from fundbench.cli.main import main
from fundbench.models.checkpoints import (
    Allowance,
    check_state_dict,
    interpolate_pos_embed,
    read_checkpoint,
    unwrap,
    weights_digest,
)
from fundbench.models.weights import RunFile, env_var, resolve_weights


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name in ("cli", "config", "env"):
        paths[name] = tmp_path / f"{name}.pth"
        paths[name].write_bytes(name.encode())
    return paths


def test_env_var_names():
    assert env_var("retfound_cfp") == "FUNDBENCH_WEIGHTS_RETFOUND_CFP"
    assert env_var("timm:resnet50.a1_in1k") == "FUNDBENCH_WEIGHTS_TIMM_RESNET50_A1_IN1K"


def test_command_line_beats_config_file_beats_environment(files, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("weights:\n  flair: config.pth\n  keepfit_v1: config.pth\n")
    run_file = RunFile.load(config)
    env = {env_var(m): str(files["env"]) for m in ("flair", "keepfit_v1", "retfound_cfp")}
    got = resolve_weights(
        ["flair", "keepfit_v1", "retfound_cfp", "random_init"],
        {"flair": str(files["cli"])},
        run_file,
        env,
    )
    assert got["flair"].path == str(files["cli"]) and got["flair"].source == "command line"
    # relative paths in a config file are relative to the file
    assert got["keepfit_v1"].path == str(files["config"])
    assert got["keepfit_v1"].source == f"config file {config}"
    assert got["retfound_cfp"].path == str(files["env"])
    assert got["retfound_cfp"].source == "environment $FUNDBENCH_WEIGHTS_RETFOUND_CFP"
    assert "random_init" not in got


def test_bare_path_needs_a_single_model_and_names_must_be_in_the_run(files):
    got = resolve_weights(["flair"], {"": str(files["cli"])}, RunFile(), {})
    assert got["flair"].path == str(files["cli"])
    with pytest.raises(ConfigError, match="ambiguous"):
        resolve_weights(["flair", "keepfit_v1"], {"": str(files["cli"])}, RunFile(), {})
    with pytest.raises(ConfigError, match=r"\['retfound'\].*not in --model"):
        resolve_weights(["flair"], {"retfound": str(files["cli"])}, RunFile(), {})


def test_missing_files_and_bad_config_files_are_one_line(files, tmp_path):
    with pytest.raises(ConfigError, match=r"FUNDBENCH_WEIGHTS_FLAIR: '/nope.pth' does not exist"):
        resolve_weights(["flair"], {}, RunFile(), {"FUNDBENCH_WEIGHTS_FLAIR": "/nope.pth"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("wieghts: {flair: x}\n")
    with pytest.raises(ConfigError, match="unknown key.*wieghts"):
        RunFile.load(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        RunFile.load(tmp_path / "absent.yaml")


def test_model_needing_weights_fails_before_any_work(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("FUNDBENCH_WEIGHTS_FLAIR", raising=False)
    monkeypatch.delenv("FUNDBENCH_CONFIG", raising=False)
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "--model",
            "random_init",
            "--model",
            "flair",
            "--dataset",
            "synth_dr",
            "--limit",
            "2",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().err
    assert code == 2
    assert "model 'flair' needs a weights file" in text and "FUNDBENCH_WEIGHTS_FLAIR" in text
    assert not (out / "records").exists(), "nothing may run when a later model lacks weights"


def test_config_file_model_args_reach_the_factory(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model_args:\n  random_init: {arch: resnet10t}\n")
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "--model",
            "random_init",
            "--config",
            str(config),
            "--dataset",
            "synth_glaucoma",
            "--task",
            "linear_probe",
            "--limit",
            "3",
            "--bootstrap",
            "10",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "run.json").read_text())
    assert info["models"]["random_init"]["name"] == "random_init[resnet10t,seed=0]"


# -- core checkpoint helpers -----------------------------------------------------------------


def test_read_checkpoint_formats_and_digest(tmp_path):
    from safetensors.torch import save_file

    state = {"a.weight": torch.randn(2, 3), "b": torch.zeros(1)}
    torch.save({"model": state, "epoch": 3}, tmp_path / "w.pth")
    save_file(state, tmp_path / "w.safetensors")
    for name in ("w.pth", "w.safetensors"):
        got = unwrap(read_checkpoint(tmp_path / name), name)
        assert set(got) == set(state) and torch.equal(got["a.weight"], state["a.weight"])
        expected = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert weights_digest(tmp_path / name) == expected
        assert weights_digest(tmp_path / name) == expected  # second call: from the cache
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="no state dict found"):
        unwrap({"epoch": 3}, "x.pth")


def test_check_state_dict_counts_and_allowances():
    expected = {"a": (2,), "b": (3,), "c.x": (1,)}
    state = {
        "a": torch.zeros(2),
        "b": torch.zeros(4),
        "decoder.q": torch.zeros(1),
        "junk": torch.zeros(1),
    }
    with pytest.raises(CheckpointError) as info:
        check_state_dict(expected, state, "f.pth", "m")
    message = str(info.value)
    assert message.startswith("f.pth: not a checkpoint of m: 1 missing (e.g. c.x); 2 unexpected")
    assert "b (4,) (model (3,))" in message
    allow = (
        Allowance(r"decoder\.", "unexpected", "decoder"),
        Allowance(r"junk$", "unexpected", "x"),
        Allowance(r"c\.", "missing", "fresh"),
    )
    state["b"] = torch.zeros(3)
    kept = check_state_dict(expected, state, "f.pth", "m", allow)
    assert set(kept) == {"a", "b"}


def test_pos_embed_interpolation_keeps_cls_and_is_bicubic():
    pos = torch.randn(1, 1 + 4 * 4, 8)
    out = interpolate_pos_embed(pos, 2)
    assert out.shape == (1, 1 + 2 * 2, 8) and torch.equal(out[:, :1], pos[:, :1])
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(2, 2), mode="bicubic", align_corners=False)
    assert torch.allclose(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 4, 8))
    assert interpolate_pos_embed(pos, 4) is pos


def test_model_arg_splits_at_the_last_dot_and_names_must_be_in_the_run(capsys, tmp_path):
    from fundbench.cli.main import _parse_model_args

    assert _parse_model_args(["timm:resnet18.a1_in1k.resolution=64"]) == {
        "timm:resnet18.a1_in1k": {"resolution": 64}
    }
    code = main(
        [
            "run",
            "--model",
            "random_init",
            "--model-arg",
            "flair.projection=false",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "--model-arg names model(s) ['flair']" in capsys.readouterr().err
