"""``fundbench embed``: the public way to get a model's image embeddings.

Embeddings come from the same feature store that ``fundbench run`` fills (keyed by
:func:`fundbench.features.store.model_cache_key`, looked up by each image's SHA-256), so vectors
computed by a run are reused here and vice versa, and a model is built exactly as the runner
builds it (weights precedence, ``--model-arg`` options, device).

The public names are ``fundbench.embed`` and ``fundbench.EmbeddingTable``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fundbench.api.errors import ConfigError
from fundbench.api.images import IMAGE_SUFFIXES
from fundbench.api.model import Model
from fundbench.data.datasets import SPLITS, fingerprint_images
from fundbench.features.store import ExtractionStats, FeatureStore, model_cache_key
from fundbench.util.atomic import write_atomic
from fundbench.util.paths import cache_dir
from fundbench.util.validate import check_device, existing_dir, positive_int, writable_dir

#: Files a folder contributes (case-insensitive); anything else in it is ignored.
#: Output formats and the suffixes that select them when ``format`` is not given.
SUFFIX_FORMATS = {".npz": "npz", ".parquet": "parquet", ".pq": "parquet"}
FORMATS = ("npz", "parquet")
#: Version of the layout of written files (array/column names, metadata keys).
FILE_VERSION = 1
#: Name of the fingerprint cache (``<cache>/fingerprints/<name>.json``) for images that do not
#: come from a registered dataset.
FINGERPRINTS = "_embed"
_META_KEY = "fundbench"
_PROVENANCE = (
    "model",
    "model_name",
    "weights_digest",
    "weights_source",
    "preprocess_digest",
    "preprocess",
    "variant",
    "cache_key",
    "dataset",
    "split",
)


@dataclass(eq=False)  # arrays do not compare to one bool; compare fields explicitly
class EmbeddingTable:
    """Embeddings of N images by one model, with where they came from.

    ``ids[i]`` is the SHA-256 of image ``paths[i]`` (the feature store's key) and
    ``vectors[i]`` its embedding (``float32``, shape ``[N, D]``). The provenance fields say
    which weights, preprocessing and model variant produced them: the same values a result
    record of ``fundbench run`` carries.
    """

    ids: list[str]
    paths: list[str]
    vectors: np.ndarray
    #: the name the model was asked for (``random_init``, ``timm:resnet50``)
    model: str
    weights_digest: str
    preprocess_digest: str
    #: the model's :class:`~fundbench.PreprocessConfig` as a dict
    preprocess: dict
    variant: str = ""
    #: the model's own descriptive name (``random_init[resnet18,seed=0]``)
    model_name: str = ""
    #: where the weights path came from (command line, config file, environment) or None
    weights_source: str | None = None
    #: the feature-store folder these vectors live in
    cache_key: str = ""
    dataset: str | None = None
    split: str | None = None
    #: how many images this call embedded with a forward pass / found in the cache
    #: (0 for a table read from a file)
    computed: int = field(default=0, compare=False)
    cached: int = field(default=0, compare=False)
    #: the file written (or read), if any
    path: Path | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def provenance(self) -> dict[str, Any]:
        """Everything but the arrays, as stored in a written file's metadata."""
        return {name: getattr(self, name) for name in _PROVENANCE}

    def to_frame(self) -> pd.DataFrame:
        """One row per image: ``image_id``, ``path``, ``vector`` (a float32 array)."""
        frame = pd.DataFrame(
            {"image_id": list(self.ids), "path": list(self.paths), "vector": list(self.vectors)}
        )
        frame.attrs[_META_KEY] = self._metadata()
        return frame

    def _metadata(self) -> dict[str, Any]:
        from fundbench.util.provenance import fundbench_version

        return {
            "file_version": FILE_VERSION,
            "fundbench_version": fundbench_version(),
            "n": len(self),
            "dim": self.dim,
            **self.provenance(),
        }

    def save(self, path: str | Path, format: Literal["npz", "parquet"] | None = None) -> Path:
        """Write the table atomically: ``.npz`` arrays ``image_id``, ``path``, ``vector``
        [N, D] and ``meta`` (JSON), or Parquet columns ``image_id``, ``path``, ``vector`` (a
        list of float32) with the metadata under the key ``fundbench``. ``format`` defaults
        to the one named by the suffix."""
        path = Path(path).expanduser()
        format = output_format(path, format)
        if format == "npz":
            arrays = {
                "image_id": np.array(self.ids, dtype=str),
                "path": np.array(self.paths, dtype=str),
                "vector": np.asarray(self.vectors, dtype=np.float32),
                "meta": np.array(json.dumps(self._metadata(), sort_keys=True)),
            }

            def write(tmp: Path) -> None:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **arrays)

        else:
            frame = self.to_frame()

            def write(tmp: Path) -> None:
                frame.to_parquet(tmp, engine="pyarrow", index=False)

        write_atomic(path, write)
        self.path = path
        return path

    @classmethod
    def read(cls, path: str | Path) -> EmbeddingTable:
        """Read a file written by :meth:`save` (``fundbench embed -o FILE``); the format is
        recognised from the file's first bytes, whatever its name."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: embeddings file not found")
        with open(path, "rb") as fh:
            magic = fh.read(4)
        format = {b"PK\x03\x04": "npz", b"PAR1": "parquet"}.get(magic)
        if format is None:
            raise ConfigError(f"{path}: neither .npz nor Parquet; not a fundbench embeddings file")
        if format == "parquet" and not _has_pyarrow():
            raise ConfigError(f"{path}: reading Parquet needs pyarrow; `pip install pyarrow`")
        if format == "npz":
            with np.load(path, allow_pickle=False) as data:
                missing = {"image_id", "path", "vector", "meta"} - set(data.files)
                if missing:
                    raise ConfigError(
                        f"{path}: not a fundbench embeddings file (no {sorted(missing)})"
                    )
                ids, paths = data["image_id"].tolist(), data["path"].tolist()
                vectors = data["vector"].astype(np.float32)
                meta = json.loads(data["meta"].item())
        else:
            frame = pd.read_parquet(path, engine="pyarrow")
            meta = frame.attrs.get(_META_KEY)
            if meta is None or not {"image_id", "path", "vector"} <= set(frame.columns):
                raise ConfigError(f"{path}: not a fundbench embeddings file")
            ids, paths = frame["image_id"].tolist(), frame["path"].tolist()
            vectors = np.stack([np.asarray(v, dtype=np.float32) for v in frame["vector"]])
        known = {k: meta.get(k) for k in _PROVENANCE}
        known["variant"] = known["variant"] or ""
        known["model_name"] = known["model_name"] or ""
        known["cache_key"] = known["cache_key"] or ""
        return cls(ids=ids, paths=paths, vectors=vectors, path=path, **known)


def embed(
    model: str | Model,
    images: str | Path | Sequence[str | Path] | None = None,
    *,
    dataset: str | None = None,
    split: str | None = None,
    weights: str | Path | None = None,
    model_args: Mapping[str, Any] | None = None,
    data_root: str | Path | None = None,
    dataset_root: str | Path | None = None,
    out: str | Path | None = None,
    format: Literal["npz", "parquet"] | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    cache: str | Path | None = None,
    config: str | Path | None = None,
    host=None,
) -> EmbeddingTable:
    """Embed images with a model through the shared feature store; optionally write them.

    What to embed — exactly one of:

    - ``images``: a folder (searched recursively for ``.png .jpg .jpeg .tif .tiff .bmp``,
      any case, sorted by relative path; hidden files and folders are skipped), one image
      file, a ``.txt`` file with one image path per line (relative paths are relative to the
      list file; blank lines and ``#`` comments are skipped), or a sequence of any of these
      (kept in the order given);
    - ``dataset``: a registered dataset id (``fundbench list datasets``), read as
      ``fundbench run`` reads it (``data_root``: the folder holding one folder per dataset;
      ``dataset_root``: this dataset's own folder; else the run config file's), optionally
      only one ``split`` (``train``, ``val`` or ``test``), in the dataset's row order.

    The model: a registered name, built exactly as ``fundbench run --model NAME`` builds it —
    ``weights`` (a file) beats the run config file (``config``, else ``$FUNDBENCH_CONFIG``),
    which beats ``$FUNDBENCH_WEIGHTS_<NAME>``; ``model_args`` are the factory's options
    (``{"resolution": 64}``, as ``--model-arg NAME.OPTION=VALUE``) over the config file's;
    ``device`` is passed on. Or a :class:`fundbench.Model` instance, used as it is (then
    ``weights``, ``model_args`` and ``config`` must be None).

    Each image is keyed by its SHA-256; vectors already in the feature store (``cache``, by
    default ``<$FUNDBENCH_CACHE or ~/.cache/fundbench>/features``, as for ``fundbench run``)
    for the same weights, preprocessing and variant are read, not recomputed, and new ones
    are added to it. ``batch_size`` is images per forward pass (default: the model's).

    ``out``: write the table atomically; ``format`` ``"npz"`` or ``"parquet"`` (default: from
    the suffix, ``.npz``, ``.parquet`` or ``.pq``). Parquet needs ``pyarrow``. See
    :meth:`EmbeddingTable.save` for the layout and :meth:`EmbeddingTable.read` to load it.

    Returns the :class:`EmbeddingTable` (rows in input order; ``computed``/``cached`` say how
    many vectors needed a forward pass). Every input is checked before any image is read or
    any model built; bad input raises :class:`fundbench.api.errors.ConfigError` (or ``DataError``
    for an unreadable image or dataset) with one line naming the culprit.
    """
    fmt = output_format(Path(out).expanduser(), format) if out is not None else None
    if format is not None and fmt is None:
        _check_format_name(format)
    if images is not None and dataset is not None:
        raise ConfigError(
            f"images and --dataset {dataset!r} given: pass one, not both "
            "(run fundbench embed once for each)"
        )
    if images is None and dataset is None:
        raise ConfigError(
            "nothing to embed: pass image files, a folder or a .txt list of paths, "
            "or --dataset ID (see `fundbench list datasets`)"
        )
    if dataset is None:
        for name, value in (
            ("--split", split),
            ("--data-root", data_root),
            ("--dataset-root", dataset_root),
        ):
            if value is not None:
                raise ConfigError(f"{name} {value}: applies only with --dataset ID")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"--split {split!r}: choose from {', '.join(SPLITS)}")
    positive_int("--batch-size", batch_size)
    for name, value in (("--data-root", data_root), ("--dataset-root", dataset_root)):
        if value is not None:
            existing_dir(name, value)
    if cache is not None:
        writable_dir("--cache", cache)
    if isinstance(model, Model):
        given = [n for n, v in (("weights", weights), ("model_args", model_args)) if v]
        if config is not None:
            given.append("config")
        if given:
            raise ConfigError(
                f"{', '.join(given)} apply only to a model given by name, not to the "
                f"{type(model).__name__} instance passed"
            )
    elif not isinstance(model, str) or not model:
        raise ConfigError(f"model {model!r}: expected a registered name or a fundbench.Model")
    else:
        check_device(device)
    paths = collect_images(images) if images is not None else None

    if not isinstance(model, Model):
        from fundbench.host.loading import get_host

        host = host or get_host()
    built = _resolve_model(model, weights, model_args, device, config, host)
    table = None
    if dataset is not None:
        table = _dataset_rows(dataset, split, data_root, dataset_root, built["run_file"], host)
    encoder: Model = built["model"] if isinstance(model, Model) else built["build"]()
    if table is not None:
        paths, ids = table["path"].astype(str).tolist(), table["sha256"].tolist()
    else:
        ids = fingerprint_images(paths, "the images given to fundbench embed", FINGERPRINTS)

    store = FeatureStore(Path(cache).expanduser() if cache else cache_dir() / "features")
    stats = ExtractionStats()
    from fundbench.util.progress import progress_callback

    with progress_callback(f"embedding {len(paths)} images with {built['name']}") as report:
        vectors = store.embeddings(
            encoder, paths, ids, batch_size=batch_size, progress=report, stats=stats
        )
    result = EmbeddingTable(
        ids=list(ids),
        paths=list(paths),
        vectors=vectors,
        model=built["name"],
        model_name=str(getattr(encoder, "name", "")),
        weights_digest=encoder.weights_digest,
        weights_source=built["weights_source"],
        preprocess_digest=encoder.preprocess_config.digest(),
        preprocess=json.loads(json.dumps(encoder.preprocess_config.as_dict())),  # as in files
        variant=encoder.variant,
        cache_key=model_cache_key(encoder),
        dataset=dataset,
        split=split,
        computed=stats.images,
        cached=stats.cached,
    )
    if out is not None:
        result.save(out, fmt)
    return result


def output_format(path: Path, format: str | None) -> str:
    """The format to write ``path`` in: ``format`` if given, else the suffix's. Checks that
    Parquet can be written (pyarrow) and that the path is not a folder."""
    if format is not None:
        _check_format_name(format)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; name the output file, e.g. {path}/emb.npz")
    by_suffix = SUFFIX_FORMATS.get(path.suffix.lower())
    if format is None and by_suffix is None:
        raise ConfigError(
            f"{path}: unknown suffix {path.suffix or '(none)'!r}; name the file .npz or "
            ".parquet, or pass --format npz|parquet"
        )
    if format is not None and by_suffix is not None and by_suffix != format:
        raise ConfigError(f"{path}: the suffix says {by_suffix}, --format says {format}")
    chosen = format or by_suffix
    if chosen == "parquet" and not _has_pyarrow():
        raise ConfigError(
            f"{path}: writing Parquet needs pyarrow, which is not installed; "
            "`pip install pyarrow`, or write .npz"
        )
    return chosen


def _has_pyarrow() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def _check_format_name(format: str) -> None:
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: choose from {', '.join(FORMATS)}")


def collect_images(images: str | Path | Sequence[str | Path]) -> list[str]:
    """The image files named by a folder, a file, a ``.txt`` list or a sequence of these,
    as absolute paths; every path is checked, and nothing is decoded."""
    items = [images] if isinstance(images, str | os.PathLike) else list(images)
    if not items:
        raise ConfigError(
            "no images given: pass image files, a folder or a .txt list of paths, or --dataset ID"
        )
    paths: list[str] = []
    for item in items:
        path = Path(item).expanduser()
        if not path.exists():
            raise ConfigError(f"{item}: no such file or folder")
        if path.is_dir():
            found = _folder_images(path)
            if not found:
                raise ConfigError(
                    f"{item}: folder holds no images ({' '.join(sorted(IMAGE_SUFFIXES))}, "
                    "searched recursively)"
                )
            paths += found
        elif path.suffix.lower() == ".txt":
            paths += _list_images(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            paths.append(os.path.abspath(path))
        else:
            raise ConfigError(f"{item}: unknown suffix {path.suffix or '(none)'!r}; {_EXPECTED}")
    return paths


_EXPECTED = (
    f"expected an image ({' '.join(sorted(IMAGE_SUFFIXES))}), a folder or a .txt list of paths"
)


def _folder_images(folder: Path) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.append((relative.as_posix(), os.path.abspath(path)))
    return [absolute for _, absolute in sorted(found)]


def _list_images(listing: Path) -> list[str]:
    paths = []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = listing.parent / path
        where = f"{listing} line {number}"
        if not path.is_file():
            raise ConfigError(f"{where}: {entry!r} is not a file ({path})")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ConfigError(
                f"{where}: {entry!r} has unknown suffix {path.suffix or '(none)'!r}; "
                f"expected an image ({' '.join(sorted(IMAGE_SUFFIXES))})"
            )
        paths.append(os.path.abspath(path))
    if not paths:
        raise ConfigError(f"{listing}: lists no image paths (one path per line)")
    return paths


def _resolve_model(model, weights, model_args, device, config, host) -> dict:
    """Check the model's name, weights and options now; build it later (``build``)."""
    from fundbench.models.weights import RunFile

    if isinstance(model, Model):
        return {
            "model": model,
            "name": str(getattr(model, "name", type(model).__name__)),
            "weights_source": None,
            "run_file": RunFile.load(None),
        }
    from fundbench.models.build import build_model, resolve_model_inputs

    entry = host.models.get(model)
    if model_args is not None and not isinstance(model_args, Mapping):
        raise ConfigError(f"model_args {model_args!r}: expected a mapping OPTION -> VALUE")
    run_file = RunFile.load(Path(config).expanduser() if config is not None else None)
    inputs = resolve_model_inputs(
        [entry],
        weights={model: str(Path(weights).expanduser())} if weights is not None else {},
        model_options={model: dict(model_args)} if model_args else {},
        run_file=run_file,
    )[model]
    return {
        "build": lambda: build_model(entry, inputs["options"], device),
        "name": model,
        "weights_source": inputs["weights_source"],
        "run_file": run_file,
    }


def _dataset_rows(dataset, split, data_root, dataset_root, run_file, host) -> pd.DataFrame:
    from fundbench.data.datasets import load_dataset
    from fundbench.host.loading import get_host

    host = host or get_host()
    host.datasets.get(dataset)  # an unknown id fails with suggestions before anything is read
    folder = dataset_root if dataset_root is not None else run_file.dataset_roots.get(dataset)
    loaded = load_dataset(
        dataset,
        host=host,
        data_root=Path(data_root).expanduser() if data_root is not None else run_file.data_root,
        folder=Path(folder).expanduser() if folder is not None else None,
    )
    table = loaded.table if split is None else loaded.split(split)
    if table.empty:
        present = sorted(set(loaded.table["split"]))
        raise ConfigError(
            f"--split {split}: dataset {dataset!r} has no {split} images (splits: "
            f"{', '.join(present)})"
        )
    return table


def default_output(model: str, dataset: str | None, format: str | None) -> Path:
    """``embeddings-<model>[-<dataset>].<npz|parquet>`` in the current folder."""
    stem = "-".join(re.sub(r"[^A-Za-z0-9._]+", "_", s) for s in (model, dataset) if s)
    return Path(f"embeddings-{stem}.{format or 'npz'}")
