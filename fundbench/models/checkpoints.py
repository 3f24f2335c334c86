"""Reading released checkpoints safely and checking them strictly.

Every model plugin loads its weights through these few functions:

* :func:`read_checkpoint` opens ``.safetensors`` with safetensors and everything else with
  ``torch.load(weights_only=True)``, so no file can run code. Errors become one line.
* :func:`unwrap` takes the state dict out of a wrapper such as ``{'model': sd}``.
* :func:`check_state_dict` compares a state dict with the model's own keys and shapes. What a
  family may legitimately leave out or carry extra (an MAE decoder, a transformers buffer) is
  declared as named :class:`Allowance` s next to the loader; anything else fails with a
  one-line error naming the file, counts and the first offending keys.
* :func:`interpolate_pos_embed` resizes ViT position embeddings as RETFound and MAE do.
* :func:`weights_digest` is the SHA-256 that goes into every result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fundbench.api.errors import CheckpointError
from fundbench.util.atomic import write_json_atomic

#: Files that hold a Hugging Face model's weights, in the order transformers prefers them.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


#: The class a whole training checkpoint pickles besides tensors (its command-line ``args``,
#: e.g. VisionFM's iBOT and UrFound's MAE checkpoints): pass it as ``allowed_classes``.
TRAINING_ARGS: tuple[type, ...] = (argparse.Namespace,)

#: what :func:`read_checkpoint` reads
NOT_A_CHECKPOINT = "not a PyTorch/safetensors checkpoint"


def read_checkpoint(path: str | Path, allowed_classes: Sequence[type] = ()) -> dict:
    """The top-level dict of a checkpoint file, read without executing any pickled code.

    The format is told by the file's first bytes (a ``.safetensors`` name is trusted), so a
    text file, an empty file or a truncated archive is one :class:`CheckpointError` saying
    it is not a checkpoint, whatever ``torch.load`` or safetensors would raise on it.

    ``allowed_classes``: the only classes besides tensors and plain containers that the
    unpickler may build, for whole training checkpoints that pickle their command-line
    arguments (``argparse.Namespace``, see :data:`TRAINING_ARGS`). Any other class is refused.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        hint = " (a folder: give the weights file inside it)" if path.is_dir() else ""
        raise CheckpointError(f"{path}: checkpoint file not found{hint}")
    kind, why = ("safetensors", "") if path.suffix == ".safetensors" else _sniff(path)
    if kind is None:
        raise CheckpointError(f"{path}: {NOT_A_CHECKPOINT} ({why})")
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ValueError, ...
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({_first(exc)[:200]})"
            ) from None
    try:
        try:  # memory-map zip checkpoints: a 1.3 GB file is not copied into RAM twice
            with torch.serialization.safe_globals(list(allowed_classes)):
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            with torch.serialization.safe_globals(list(allowed_classes)):
                data = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # garbage opcodes, not a refused class
            raise CheckpointError(f"{path}: {NOT_A_CHECKPOINT} ({_torch_reason(exc)})") from None
        allowed = "".join(f", {c.__module__}.{c.__qualname__}" for c in allowed_classes)
        raise CheckpointError(
            f"{path}: refuses to unpickle objects other than tensors, plain containers{allowed} "
            f"({_torch_reason(exc)}); re-save the state dict alone, e.g. "
            "torch.save(ckpt['model'], 'clean.pth')"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types on a damaged file
        raise CheckpointError(f"{path}: {NOT_A_CHECKPOINT} ({_torch_reason(exc)})") from None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return dict(data)


def _sniff(path: Path) -> tuple[str | None, str]:
    """(format, "") by the first bytes: ``"zip"`` (torch.save), ``"pickle"`` (legacy
    torch.save), ``"tar"`` (torch < 0.4) or ``"safetensors"``; else (None, what it is)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not head:
        return None, "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return "zip", ""
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return "pickle", ""
    if head[257:262] == b"ustar":
        return "tar", ""
    if head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return "safetensors", ""  # 8-byte little-endian header size, then the JSON header
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a character cut at byte 512 is still text
        text = head[: exc.start].decode("utf-8") if exc.start > len(head) - 4 else ""
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return None, f"a text file starting {first!r}" if first else "a text file"
    return None, f"it starts with the bytes {head[:8].hex(' ')}"


def unwrap(
    data: Mapping, path: str | Path, wrappers: Iterable[str] = ("model", "state_dict")
) -> dict[str, torch.Tensor]:
    """The state dict inside ``data``: the first of ``wrappers`` present, else ``data`` itself
    when it is a flat dict of tensors."""
    for key in wrappers:
        if key in data and isinstance(data[key], Mapping):
            data = data[key]
            break
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(sorted(map(str, data))[:5])
        raise CheckpointError(
            f"{path}: no state dict found (top-level keys: {keys}; expected "
            f"a flat dict of tensors or one of {list(wrappers)})"
        )
    return tensors


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that has it (others are kept as they are)."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


@dataclass(frozen=True)
class Allowance:
    """A documented exception to strict loading: keys matching ``pattern`` (a regular
    expression, matched from the start) may be ``missing`` from the file or ``unexpected`` in
    it, for the reason given in ``why``."""

    pattern: str
    kind: str  # "missing" | "unexpected"
    why: str

    def matches(self, key: str) -> bool:
        return re.match(self.pattern, key) is not None


def check_state_dict(
    expected: Mapping[str, torch.Tensor | torch.Size | tuple],
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    model: str,
    allowances: Iterable[Allowance] = (),
) -> dict[str, torch.Tensor]:
    """Strictly compare ``state`` with ``expected`` (a module's state dict or name -> shape).

    Returns ``state`` without the allowed unexpected keys. Raises one :class:`CheckpointError`
    that names the file, the model, how many keys are missing, unexpected or of the wrong
    shape, and the first few of each.
    """
    allowances = tuple(allowances)
    allow_missing = [a for a in allowances if a.kind == "missing"]
    allow_extra = [a for a in allowances if a.kind == "unexpected"]
    shapes = {
        k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in expected.items()
    }
    missing = [k for k in shapes if k not in state and not any(a.matches(k) for a in allow_missing)]
    unexpected = [
        k for k in state if k not in shapes and not any(a.matches(k) for a in allow_extra)
    ]
    wrong = [
        f"{k} {tuple(state[k].shape)} (model {shapes[k]})"
        for k in state
        if k in shapes and tuple(state[k].shape) != shapes[k]
    ]
    parts = mismatch_parts(missing, unexpected, wrong)
    if parts:
        raise CheckpointError(
            f"{path}: not a checkpoint of {model}: "
            + "; ".join(parts)
            + f" ({len(state)} keys in the file, {len(shapes)} in the model)"
        )
    return {k: v for k, v in state.items() if k in shapes}


def mismatch_parts(missing: list[str], unexpected: list[str], wrong: list[str]) -> list[str]:
    """The counted pieces of a key-mismatch message, each with its first few keys."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        parts.append(f"{len(wrong)} with the wrong shape (e.g. {'; '.join(wrong[:2])})")
    return parts


def load_strict(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    model: str,
    allowances: Iterable[Allowance] = (),
) -> None:
    """:func:`check_state_dict`, then load; allowed-missing keys keep the module's values."""
    state = check_state_dict(module.state_dict(), state, path, model, allowances)
    module.load_state_dict(state, strict=False)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resize a ViT position embedding [1, prefix + g*g, D] to ``grid`` x ``grid`` patches.

    As RETFound's ``interpolate_pos_embed`` (retfound.md section 2.2): the prefix (CLS) tokens
    are kept, the patch part is reshaped to a square and bicubically interpolated with
    ``align_corners=False`` and no antialiasing.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(round(patches.shape[1] ** 0.5))
    if old * old != patches.shape[1]:
        raise CheckpointError(
            f"pos_embed has {patches.shape[1]} patch positions, not a square grid; cannot resize it"
        )
    if old == grid:
        return pos_embed
    dim = patches.shape[-1]
    patches = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


def resize_vit_pos_embed(
    state: dict[str, torch.Tensor], module: torch.nn.Module, key: str = "pos_embed"
) -> dict[str, torch.Tensor]:
    """``state`` with its ``pos_embed`` interpolated to the patch grid of ``module`` (a timm
    ViT) by :func:`interpolate_pos_embed`, when the grids differ: a checkpoint trained at
    another resolution (DINOv2's 37x37 at 518 px) or a ``resolution`` option. A position
    embedding that cannot be resized is left as it is, for the strict check to report."""
    pos = state.get(key)
    target = getattr(module, "pos_embed", None)
    if pos is None or target is None or pos.ndim != 3 or tuple(pos.shape) == tuple(target.shape):
        return state
    grid = module.patch_embed.grid_size
    prefix = 0 if getattr(module, "no_embed_class", False) else module.num_prefix_tokens
    if grid[0] != grid[1] or pos.shape[-1] != target.shape[-1]:
        return state
    try:
        resized = interpolate_pos_embed(pos, grid[0], prefix)
    except CheckpointError:
        return state
    return {**state, key: resized}


def materialize_missing(module: torch.nn.Module) -> None:
    """Give the parameters a checkpoint was allowed to leave out (a fresh ``fc_norm``) their
    initial values on the CPU, after loading into a module built on the meta device."""
    for name, sub in module.named_modules():
        tensors = [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]
        if any(t.is_meta for t in tensors):
            if not hasattr(sub, "reset_parameters"):
                raise RuntimeError(f"module {name!r} was not loaded and cannot be reset")
            sub.to_empty(device="cpu", recurse=False)
            sub.reset_parameters()


def load_meta_module(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    model: str,
    allowances: Iterable[Allowance] = (),
) -> torch.nn.Module:
    """Check ``state`` strictly against ``module`` (built on the meta device, so no random
    initialisation is paid for), load it in fp32 by assignment, initialise the allowed-missing
    parameters, and return the module in eval mode."""
    state = check_state_dict(module.state_dict(), state, path, model, allowances)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, strict=False, assign=True)
    materialize_missing(module)
    return module.eval()


def hf_weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face model folder (shards included), or []."""
    for name in HF_WEIGHT_FILES:
        candidate = folder / name
        if candidate.is_file():
            if name.endswith(".index.json"):
                index = json.loads(candidate.read_text())
                return sorted({folder / f for f in index.get("weight_map", {}).values()})
            return [candidate]
    return []


def weights_digest(path: str | Path) -> str:
    """SHA-256 of a weights file; for a folder, of its weight files' digests in name order.

    Digests are cached by (path, size, mtime), so a 1.3 GB checkpoint is hashed once.
    """
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        files = hf_weight_files(path)
        if not files:
            raise CheckpointError(f"{path}: no weights file ({', '.join(HF_WEIGHT_FILES)})")
        h = hashlib.sha256()
        for file in files:
            h.update(f"{file.name}:{_cached_file_digest(file)}\n".encode())
        config = path / "config.json"
        if config.is_file():  # the config decides how the weights are used
            h.update(f"config.json:{_cached_file_digest(config)}\n".encode())
        return h.hexdigest()
    return _cached_file_digest(path)


def _cached_file_digest(path: Path) -> str:
    from fundbench.api.model import file_digest
    from fundbench.util.paths import cache_dir

    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    cache = cache_dir() / "digests" / f"{key}.json"
    if cache.is_file():
        try:
            return json.loads(cache.read_text())["sha256"]
        except (ValueError, KeyError, OSError):
            pass
    digest = file_digest(str(path))
    try:
        write_json_atomic(cache, {"path": str(path), "sha256": digest})
    except OSError:  # a read-only cache only costs the next run a rehash
        pass
    return digest


def resolve_hf_folder(
    name_or_path: str, allow_patterns: Iterable[str] = ("config.json",)
) -> Path | None:
    """A local folder for a Hugging Face repo id or path, from disk or the local cache only.

    Never downloads: the Hugging Face cache is searched with ``local_files_only``. Returns
    None when nothing local is found.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    if (
        candidate.is_absolute()
        or name_or_path.startswith((".", "~"))
        or name_or_path.count("/") > 1
    ):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            name_or_path, local_files_only=True, allow_patterns=list(allow_patterns)
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return Path(folder)


def _torch_reason(exc: BaseException) -> str:
    """The informative part of a torch.load error: after "WeightsUnpickler error:", or the
    first sentence (torch appends paragraphs of advice)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    text = _first(Exception(text)) if text.strip() else type(exc).__name__
    return text.split(". ")[0][:160]


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
