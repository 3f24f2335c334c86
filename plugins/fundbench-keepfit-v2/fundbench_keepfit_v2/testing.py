"""Small fixtures for tests and smoke checks: a toy MM-Retinal style folder, tiny shapes, and
a host-synchronisation counter that works without a GPU.

The toy folder holds simple drawn images (class-specific shapes and colours) with a label
and a caption each, in the folder layout ``data.read_folder`` reads, so a complete training
run takes seconds on a CPU.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw
from torch.utils._python_dispatch import TorchDispatchMode

TOY_CLASSES = ("normal", "drusen", "haemorrhage")
_CAPTION = {
    "normal": "Fundus photograph of the {eye}: no abnormal findings; healthy optic disc.",
    "drusen": "Fundus photograph of the {eye}: {n} yellow drusen at the macula.",
    "haemorrhage": "Fundus photograph of the {eye}: {n} dark blot haemorrhages.",
}

#: Overrides that shrink the tiny preset to a model that trains in about a second.
TINY_SHAPES = {
    "vision.resolution": "32",
    "vision.width": "8",
    "text.hidden": "32",
    "text.layers": "2",
    "text.heads": "2",
    "text.intermediate": "64",
    "text.vocab_size": "300",
    "text.max_length": "32",
    "model.proj_dim": "16",
    "model.decoder_dim": "16",
    "model.decoder_heads": "2",
    "model.decoder_ff": "32",
    "model.decoder_layers": "1",
    "model.caption_max_length": "24",
    "stage1.batch_size": "8",
    "stage1.steps": "3",
    "stage1.warmup_steps": "1",
    "stage2.batch_size": "8",
    "stage2.elite_batch_size": "4",
    "stage2.steps": "6",
    "stage2.warmup_epochs": "0.2",
    "data.preload": "true",
    "data.workers": "1",
    "train.threads": "1",
}


def make_toy_folder(root: str | Path, per_class: int = 8, size: int = 48, seed: int = 0) -> Path:
    """Write ``root/images/*.png`` and ``root/toy_cfp.csv`` (image, label, caption, split)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for c, name in enumerate(TOY_CLASSES):
        for i in range(per_class):
            image = Image.new("RGB", (size, size), (150 + 20 * c, 70, 30))
            draw = ImageDraw.Draw(image)
            n = int(rng.integers(2, 6))
            for _ in range(n if name != "normal" else 0):
                x, y = rng.integers(4, size - 8, 2)
                r = 3 if name == "drusen" else 4
                colour = (240, 220, 90) if name == "drusen" else (60, 10, 10)
                draw.ellipse([x, y, x + r, y + r], fill=colour)
            draw.ellipse([size - 14, size // 2 - 5, size - 4, size // 2 + 5], fill=(250, 230, 200))
            rel = f"images/{name}_{i:02d}.png"
            image.save(root / rel)
            eye = "right eye" if i % 2 else "left eye"
            rows.append(
                {
                    "image": rel,
                    "label": name,
                    "split": "train",
                    "caption": _CAPTION[name].format(eye=eye, n=n),
                }
            )
    pd.DataFrame(rows).to_csv(root / "toy_cfp.csv", index=False)
    return root


#: aten ops after which the host must wait for the device: reading a value
#: (``item()``, ``float()``, ``bool()``, ``if tensor:`` all end in ``_local_scalar_dense``) or
#: an output whose shape depends on the values.
SYNC_OPS = frozenset(
    {
        "_local_scalar_dense",
        "nonzero",
        "nonzero_static",
        "masked_select",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "equal",
        "is_nonzero",
        "allclose",
        "repeat_interleave",
        "bincount",
    }
)
#: Indexing ops that turn a boolean mask into indices (``nonzero``) inside the kernel on CPU.
BOOL_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
#: Tensor methods that copy to the host; patched while counting (on CPU they dispatch no op).
SYNC_METHODS = ("cpu", "numpy", "tolist")


def _has_bool_index(indices) -> bool:
    return any(
        isinstance(i, torch.Tensor) and i.dtype == torch.bool
        for i in (indices or ())
        if i is not None
    )


class HostSyncCounter(TorchDispatchMode):
    """Counts, on any device, what would make the host wait for a CUDA device -- a CPU
    emulation of ``torch.cuda.set_sync_debug_mode``.

    Counted in the thread that enters it (dispatch modes are thread-local, so batches built
    by loader threads are not): the ops in :data:`SYNC_OPS` and calls of
    ``Tensor.cpu/numpy/tolist``. ``exempt()`` names tensors that live on the host in a CUDA
    run too (the optimizer's step counters): reading those is no synchronisation.
    :meth:`paused` excludes code meant to synchronise (the log flush, checkpoints).
    """

    def __init__(self, exempt: Callable[[], Iterable[torch.Tensor]] = tuple) -> None:
        super().__init__()
        self.exempt = exempt
        self.calls: list[tuple[str, str]] = []
        self._paused = 0
        self._thread = 0
        self._saved: dict = {}

    @property
    def count(self) -> int:
        return len(self.calls)

    def report(self, limit: int = 5) -> str:
        return "; ".join(f"{name} at {where}" for name, where in self.calls[:limit])

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def _record(self, name: str) -> None:
        frames = [
            f"{Path(f.filename).name}:{f.lineno} {f.name}"
            for f in traceback.extract_stack()[:-2]
            if "/torch/" not in f.filename and "testing.py" not in f.filename
        ]
        self.calls.append((name, frames[-1] if frames else "?"))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if not self._paused:
            first = args[0] if args else None
            if name in SYNC_OPS:
                if not (name == "_local_scalar_dense" and any(first is t for t in self.exempt())):
                    self._record(f"aten.{name}")
            elif name in BOOL_INDEX_OPS and len(args) > 1 and _has_bool_index(args[1]):
                self._record(f"aten.{name} with a boolean mask")
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> HostSyncCounter:
        self._thread = threading.get_ident()
        for method in SYNC_METHODS:
            original = getattr(torch.Tensor, method)
            self._saved[method] = original

            def counted(tensor, *args, _original=original, _method=method, **kwargs):
                if threading.get_ident() == self._thread and not self._paused:
                    self._record(f"Tensor.{_method}")
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, method, counted)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for method, original in self._saved.items():
                setattr(torch.Tensor, method, original)
            self._saved.clear()
