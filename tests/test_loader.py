"""The DataLoader extraction pipeline: worker processes, uint8 host stage + device stage,
precision, and --batch-size auto backing off on out-of-memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fundbench import RunConfig, run
from fundbench.api.model import Model
from fundbench.api.preprocess import PreprocessConfig
from fundbench.features.options import ExtractionOptions
from fundbench.features.store import FeatureStore
from fundbench.runs.records import iter_records

CONFIGS = {
    "center_crop": PreprocessConfig(resolution=32, crop_pct=0.875),
    "pad": PreprocessConfig(resolution=32, mode="pad", mean=None, std=None),
    "stretch": PreprocessConfig(resolution=24, mode="stretch", interpolation="bilinear"),
}


class TinyConv(Model):
    """A real (random) conv net: numerics sensitive to every pixel."""

    embed_dim = 8

    def __init__(self, config: PreprocessConfig, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
        ).eval()
        self.name, self.preprocess_config = f"tiny_{config.mode}", config
        self.weights_digest = f"tiny-{seed}-{config.digest()}"

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch).flatten(1)


class CustomPreprocess(TinyConv):
    """A plugin that overrides preprocess: it runs whole in the worker."""

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return super().preprocess(image.rotate(90, expand=True))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(97, 61), (64, 64), (45, 80), (120, 90), (33, 33)] * 3):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = root / f"im{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def _per_image(model: Model, paths, batch: int = 4) -> np.ndarray:
    """The reference: each image through the model's own whole ``preprocess`` (decoding,
    resize, ToTensor, Normalize per image), stacked in batches of the same size (a conv's
    last bits depend on the batch size, which is not what is under test)."""
    from fundbench.api.images import decode_image

    tensors = [model.preprocess(decode_image(p, model.preprocess_config)) for p in paths]
    with torch.inference_mode():
        return np.concatenate(
            [
                model.encode_images(torch.stack(tensors[i : i + batch])).float().numpy()
                for i in range(0, len(tensors), batch)
            ]
        )


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_workers_give_the_per_image_embeddings_exactly(images, tmp_path, workers):
    models = [TinyConv(c) for c in CONFIGS.values()] + [CustomPreprocess(CONFIGS["pad"], 1)]
    store = FeatureStore(tmp_path, options=ExtractionOptions(workers=workers, prefetch=1))
    digests = [f"d{i}" for i in range(len(images))]
    store.extract(models, images, digests, batch_size=4)  # one decode pass for all four
    for model in models:
        got = np.stack([store.known(store.key(model))[d] for d in digests])
        assert np.array_equal(got, _per_image(model, images)), (model.name, workers)


def test_host_stage_is_uint8_unless_the_authors_resize_floats(images):
    from fundbench.api.images import decode_image

    image = decode_image(images[0], CONFIGS["center_crop"])
    assert CONFIGS["center_crop"].host_stage(image).dtype == torch.uint8
    assert CONFIGS["stretch"].host_stage(image).dtype == torch.uint8
    assert CONFIGS["pad"].host_stage(image).dtype == torch.float32  # FLAIR's float canvas


class RunsOutOfMemory(TinyConv):
    """Fails like CUDA does above ``fits`` images per forward pass."""

    fits = 3
    seen: list[int] = []

    def encode_images(self, batch):
        type(self).seen.append(len(batch))
        if len(batch) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().encode_images(batch)


def test_batch_size_auto_halves_on_out_of_memory_and_remembers(images, tmp_path, capsys):
    model = RunsOutOfMemory(CONFIGS["center_crop"])
    model.default_batch_size = 16
    digests = [f"d{i}" for i in range(len(images))]
    RunsOutOfMemory.seen = []
    auto = FeatureStore(tmp_path / "a", options=ExtractionOptions(workers=0, batch_size="auto"))
    x = auto.embeddings(model, images, digests, batch_size="auto")
    np.testing.assert_allclose(x, _per_image(TinyConv(CONFIGS["center_crop"]), images), atol=1e-6)
    # 15 images (one loader batch of up to 16): 15, 8 and 4 fail, 2 fits
    assert RunsOutOfMemory.seen[:4] == [15, 8, 4, 2] and set(RunsOutOfMemory.seen[4:]) <= {1, 2}
    assert "out of memory; forward batch halved to 2" in capsys.readouterr().err
    # the next run starts from what fit: no failed attempt at all
    RunsOutOfMemory.seen = []
    again = FeatureStore(tmp_path / "b", options=ExtractionOptions(workers=0, batch_size="auto"))
    again.embeddings(model, images, digests, batch_size="auto")
    assert max(RunsOutOfMemory.seen) == 2
    # a fixed batch size never hides an out-of-memory error
    fixed = FeatureStore(tmp_path / "c", options=ExtractionOptions(workers=0))
    with pytest.raises(torch.OutOfMemoryError):
        fixed.embeddings(model, images, digests, batch_size=8)


def test_precision_changes_the_cache_key_and_runs_under_autocast(images, tmp_path):
    model = TinyConv(CONFIGS["center_crop"])
    digests = [f"d{i}" for i in range(len(images))]
    keys, vectors = {}, {}
    for precision in ("fp32", "bf16"):
        store = FeatureStore(tmp_path, options=ExtractionOptions(workers=0, precision=precision))
        keys[precision] = store.key(model)
        vectors[precision] = store.embeddings(model, images, digests)
    assert keys["fp32"] != keys["bf16"]
    assert len({p.name for p in tmp_path.iterdir()}) == 2  # two cache folders, never shared
    assert not np.array_equal(vectors["fp32"], vectors["bf16"])  # bf16 rounding is visible
    np.testing.assert_allclose(vectors["bf16"], vectors["fp32"], rtol=0.05, atol=0.02)
    # fp32 keeps the key of before the option existed (old caches stay valid)
    from fundbench.features.store import model_cache_key

    assert keys["fp32"] == model_cache_key(model)


def test_precision_is_in_the_fingerprint_and_the_provenance(tmp_path):
    def cells(precision):
        out = tmp_path / precision
        config = RunConfig(
            models=["random_init"],
            datasets=["synth_glaucoma"],
            tasks=["linear_probe"],
            limit=4,
            bootstrap=5,
            out=out,
            cache=tmp_path / "cache",
            precision=precision,
            workers=1,
        )
        run(config)
        return {json.dumps(r["cell"]): r for r in iter_records(out)}

    fp32, bf16 = cells("fp32"), cells("bf16")
    assert fp32.keys() == bf16.keys()
    for cell in fp32:
        assert fp32[cell]["fingerprint"] != bf16[cell]["fingerprint"]
        assert fp32[cell]["provenance"]["precision"] == "fp32"
        assert bf16[cell]["provenance"]["precision"] == "bf16"


def test_one_model_extracts_other_image_sets_in_parallel_and_waits_for_its_own(images, tmp_path):
    """The cache lock is per (model, set of images): a cluster extracts one model on many
    datasets at once, and two workers given the same images embed them once."""
    import threading
    import time

    from fundbench.features.store import _image_set
    from fundbench.util.locks import exclusive

    model = TinyConv(CONFIGS["center_crop"])
    store = FeatureStore(tmp_path, options=ExtractionOptions(workers=0))
    first, second = images[:7], images[7:]
    ids = {p: f"d{i}" for i, p in enumerate(images)}
    released = threading.Event()
    locks = tmp_path / store.key(model) / ".locks"

    def hold(image_set: str, seconds: float, folder: Path = locks) -> None:
        with exclusive(folder / image_set, what="test", wait=None):
            held.set()
            time.sleep(seconds)
        released.set()

    held = threading.Event()
    other = threading.Thread(target=hold, args=(_image_set([ids[p] for p in first]), 30))
    other.daemon = True
    other.start()
    held.wait(5)
    t0 = time.perf_counter()
    store.embeddings(model, second, [ids[p] for p in second])  # another set: no wait
    assert time.perf_counter() - t0 < 20 and not released.is_set()

    other_model = TinyConv(CONFIGS["center_crop"], seed=1)
    held = threading.Event()
    other_locks = tmp_path / store.key(other_model) / ".locks"
    same = threading.Thread(
        target=hold, args=(_image_set([ids[p] for p in second]), 1.0, other_locks)
    )
    released.clear()
    same.start()
    held.wait(5)
    store.embeddings(other_model, second, [ids[p] for p in second])  # the same set: waits
    assert released.is_set()  # it could only go on once the holder let go
    same.join()


def test_pipeline_options_through_the_command_line(tmp_path, capsys):
    """The README's --batch-size auto, --precision and --workers, end to end from the CLI."""
    from fundbench.cli.main import main

    out = tmp_path / "out"
    code = main(
        ["run", "--model", "random_init", "--dataset", "synth_glaucoma", "--limit", "4",
         "--task", "linear_probe", "--bootstrap", "5", "--out", str(out),
         "--cache", str(tmp_path / "cache"), "--batch-size", "auto", "--precision", "bf16",
         "--workers", "1", "--prefetch", "1"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    records = list(iter_records(out))
    assert records and all(r["provenance"]["precision"] == "bf16" for r in records)
    config = json.loads((out / "run.json").read_text())["config"]
    assert (config["batch_size"], config["workers"], config["prefetch"]) == ("auto", 1, 1)
