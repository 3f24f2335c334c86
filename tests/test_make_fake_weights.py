"""``scripts/make-fake-weights.py`` (the README's smoke-run path): it writes the named release
formats, each loads through its plugin as ``fundbench run`` builds it, and an unknown name is
one line listing the choices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from fundbench import load_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make-fake-weights.py"


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )


def test_writes_the_named_formats_and_they_load(tmp_path):
    names = ["dinoret.pth", "ret_clip_vit_b_16.pt", "ret_clip_vocab/"]
    proc = _script(str(tmp_path), "--only", *names)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n.rstrip("/") for n in names)
    dinoret = load_model("dinoret", tmp_path / "dinoret.pth")
    assert dinoret.embed_dim == 768
    ret_clip = load_model(
        "ret_clip",
        tmp_path / "ret_clip_vit_b_16.pt",
        tokenizer=str(tmp_path / "ret_clip_vocab"),
    )
    assert ret_clip.text_unavailable_reason is None and ret_clip.text_invalid_reason is None
    out = ret_clip.encode_images(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 1024)


def test_an_unknown_file_name_is_one_line_with_the_choices(tmp_path):
    proc = _script(str(tmp_path), "--only", "dinoret.pt")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown file(s) ['dinoret.pt']" in lines[0]
    assert "dinoret.pth" in lines[0] and not any(tmp_path.iterdir())
