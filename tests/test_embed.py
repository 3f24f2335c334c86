"""``fundbench embed`` / ``fundbench.embed``: vectors, files, the shared cache, bad input."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fundbench_random_init.model import RandomInitModel
from PIL import Image

import fundbench
from fundbench.api.errors import ConfigError
from fundbench.cli.main import main
from fundbench.features.embed import EmbeddingTable
from fundbench.features.store import ExtractionStats, FeatureStore, model_cache_key

embed_module = importlib.import_module(
    "fundbench.features.embed"
)  # fundbench.embed is the function
SMALL = {"resolution": 64}  # random_init at 64 px: a ResNet-18 forward pass in milliseconds


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FUNDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def images(tmp_path) -> Path:
    """Three PNGs and a JPEG (one in a subfolder), plus files that are not images."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    for name in ("b.png", "a.png", "sub/c.PNG", "d.jpg", ".hidden/e.png", ".f.png"):
        pixels = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, format="JPEG" if name.endswith("jpg") else None)
    (folder / "notes.csv").write_text("not an image\n")
    return folder


EXPECTED = ["a.png", "b.png", "d.jpg", "sub/c.PNG"]  # sorted, recursive, hidden ones skipped


def _reference(paths: list[str]) -> np.ndarray:
    """The same model and preprocessing, run by hand."""
    model = RandomInitModel(**SMALL)
    batch = torch.stack([model.preprocess(Image.open(p)) for p in paths])
    with torch.inference_mode():
        return model.encode_images(batch).numpy()


def test_vectors_equal_the_models_own_forward_pass(images, cache):
    table = fundbench.embed("random_init", images, model_args=SMALL)
    assert table.paths == [str(images / name) for name in EXPECTED]
    assert table.ids == [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in table.paths]
    assert table.vectors.dtype == np.float32 and table.vectors.shape == (4, 512)
    np.testing.assert_allclose(table.vectors, _reference(table.paths), rtol=1e-4, atol=1e-5)
    model = RandomInitModel(**SMALL)
    assert table.model == "random_init" and table.model_name == model.name
    assert table.weights_digest == model.weights_digest
    assert table.preprocess_digest == model.preprocess_config.digest()
    assert table.preprocess["resolution"] == 64
    assert table.cache_key == model_cache_key(model)
    assert (table.computed, table.cached) == (4, 0)


def test_file_list_and_mixed_inputs_keep_their_order(images, cache, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\nimgs/d.jpg\n\n{images / 'a.png'}\n")
    table = fundbench.embed(
        "random_init", [images / "b.png", listing, images / "b.png"], model_args=SMALL
    )
    names = [Path(p).name for p in table.paths]
    assert names == ["b.png", "d.jpg", "a.png", "b.png"]
    assert table.ids[0] == table.ids[3] and table.computed == 3  # the same image embedded once
    np.testing.assert_allclose(table.vectors, _reference(table.paths), rtol=1e-4, atol=1e-5)


def test_second_call_reuses_the_cache_without_a_forward_pass(images, cache, monkeypatch):
    calls = []
    forward = RandomInitModel.encode_images

    def counted(self, batch):
        calls.append(len(batch))
        return forward(self, batch)

    monkeypatch.setattr(RandomInitModel, "encode_images", counted)
    first = fundbench.embed("random_init", images, model_args=SMALL)
    # 4 images, and the first again alone: the contract's batch-size rule on the first batch
    assert calls == [4, 1] and (cache / "features" / first.cache_key).is_dir()
    calls.clear()
    second = fundbench.embed("random_init", images, model_args=SMALL)
    assert calls == [] and (second.computed, second.cached) == (0, 4)
    np.testing.assert_array_equal(first.vectors, second.vectors)
    other = fundbench.embed("random_init", images, model_args={"resolution": 72})
    assert sum(calls) == 5 and other.cache_key != first.cache_key  # new preprocessing


def test_run_and_embed_share_one_feature_store(toy_host, cache, tmp_path):
    from fundbench import RunConfig, run

    store = tmp_path / "features"
    config = RunConfig(
        models=["toy_clip"],
        datasets=["toy_csv"],
        tasks=["linear_probe"],
        out=tmp_path / "results",
        cache=store,
        bootstrap=10,
        report=False,
    )
    run(config, toy_host)
    table = fundbench.embed("toy_clip", dataset="toy_csv", cache=store, host=toy_host)
    assert len(table) == 48 and table.computed == 0 and table.dataset == "toy_csv"

    # ... and vectors that embed computed are what the run's extraction path finds
    fresh = tmp_path / "fresh"
    test = fundbench.embed("toy_clip", dataset="toy_csv", split="test", cache=fresh, host=toy_host)
    assert test.computed == len(test) > 0
    model = toy_host.models.get("toy_clip").obj()
    stats = ExtractionStats()
    again = FeatureStore(fresh).embeddings(model, test.paths, test.ids, stats=stats)
    assert stats.images == 0 and stats.cached == len(set(test.ids))
    np.testing.assert_array_equal(again, test.vectors)


def test_dataset_split_rows_and_ids_come_from_the_dataset(toy_host, cache):
    from fundbench.data.datasets import load_dataset

    dataset = load_dataset("toy_csv", host=toy_host)
    table = fundbench.embed("toy_clip", dataset="toy_csv", split="val", host=toy_host)
    val = dataset.split("val")
    assert table.paths == val["path"].astype(str).tolist()
    assert table.ids == val["sha256"].tolist() and table.split == "val"
    assert table.vectors.shape == (len(val), 32)


def test_npz_round_trip(images, cache, tmp_path):
    table = fundbench.embed("random_init", images, model_args=SMALL, out=tmp_path / "e.npz")
    assert table.path == tmp_path / "e.npz"
    back = EmbeddingTable.read(tmp_path / "e.npz")
    with np.load(tmp_path / "e.npz") as data:
        assert {"image_id", "path", "vector", "meta"} <= set(data.files)
    _assert_same(back, table)
    with pytest.raises(ConfigError, match="not a fundbench embeddings file"):
        EmbeddingTable.read(images / "a.png")


def test_parquet_round_trip(images, cache, tmp_path):
    import pandas as pd

    out = tmp_path / "e.parquet"
    table = fundbench.embed("random_init", images, model_args=SMALL, out=out)
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["image_id", "path", "vector"]
    assert frame["vector"].iloc[0].dtype == np.float32
    _assert_same(EmbeddingTable.read(out), table)
    as_format = fundbench.embed(
        "random_init", images, model_args=SMALL, out=tmp_path / "x.bin", format="parquet"
    )
    _assert_same(EmbeddingTable.read(tmp_path / "x.bin"), as_format)


def test_parquet_without_pyarrow_says_what_to_install(images, cache, tmp_path, monkeypatch):
    monkeypatch.setattr(embed_module, "_has_pyarrow", lambda: False)
    with pytest.raises(ConfigError, match="pip install pyarrow"):
        fundbench.embed("random_init", images, model_args=SMALL, out=tmp_path / "e.parquet")
    assert not (cache / "features").exists()


def _assert_same(a: EmbeddingTable, b: EmbeddingTable) -> None:
    assert a.ids == b.ids and a.paths == b.paths
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert a.vectors.dtype == np.float32
    assert a.provenance() == b.provenance()


def test_model_instance_is_used_as_is(images, cache):
    model = RandomInitModel(**SMALL)
    table = fundbench.embed(model, images / "a.png")
    assert table.model == model.name and len(table) == 1
    with pytest.raises(ConfigError, match="apply only to a model given by name"):
        fundbench.embed(model, images, model_args=SMALL)


def _lines(text: str) -> list[str]:
    return [
        line
        for line in text.strip().splitlines()
        if line.strip() and not line.startswith("warning:")
    ]


def test_cli_writes_the_file_and_prints_one_summary(images, cache, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out" / "emb.npz"
    args = ["embed", "--model", "random_init", "--model-arg", "resolution=64", str(images)]
    code = main([*args, "-o", str(out)])
    text = capsys.readouterr()
    assert code == 0, text
    assert _lines(text.out) == [
        f"embedded 4 images, 512 dims with random_init (4 computed, 0 from the cache): "
        f"written to {out}"
    ]
    back = EmbeddingTable.read(out)
    np.testing.assert_allclose(back.vectors, _reference(back.paths), rtol=1e-4, atol=1e-5)

    monkeypatch.chdir(tmp_path)  # without -o: embeddings-<model>.npz here, from the cache
    code = main([*args[:3], "--model-arg", "random_init.resolution=64", str(images)])
    assert code == 0
    assert "(0 computed, 4 from the cache)" in capsys.readouterr().out
    np.testing.assert_array_equal(
        EmbeddingTable.read("embeddings-random_init.npz").vectors, back.vectors
    )


BAD = [
    (["{imgs}/missing.png"], "no such file or folder"),
    (["{empty}"], "folder holds no images"),
    (["{imgs}/notes.csv"], "unknown suffix '.csv'"),
    (["{list}"], "list.txt line 2: 'nope.png' is not a file"),
    (["{imgs}", "-o", "{tmp}/e.csv"], "unknown suffix '.csv'; name the file .npz or .parquet"),
    (["{imgs}", "--format", "hdf5"], "--format 'hdf5': choose from npz, parquet"),
    (["{imgs}", "-o", "{tmp}/e.npz", "--format", "parquet"], "the suffix says npz"),
    (["{imgs}", "-o", "{tmp}"], "is a folder"),
    (["{imgs}", "--dataset", "synth_glaucoma"], "pass one, not both"),
    ([], "nothing to embed"),
    (["{imgs}", "--split", "test"], "--split test: applies only with --dataset"),
    (["--dataset", "synth_glaucoma", "--split", "dev"], "--split 'dev': choose from train"),
    (["--dataset", "synth_glaucomaa"], "unknown dataset 'synth_glaucomaa'"),
    (["{imgs}", "--model-arg", "resolution"], "--model-arg 'resolution': expected OPTION=VALUE"),
    (["{imgs}", "--model-arg", "flair.x=1"], "expected OPTION=VALUE or random_init.OPTION"),
    (["{imgs}", "--model-arg", "depth=3"], "does not accept the options"),
    (["{imgs}", "--weights", "/nonexistent/w.pth"], "does not exist"),
    (["{imgs}", "--weights", "flair={imgs}/a.png"], "names model 'flair'"),
    (["{imgs}", "--batch-size", "0"], "--batch-size 0: must be a positive integer"),
]


@pytest.mark.parametrize("args, expected", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_is_one_line_and_no_work(images, cache, tmp_path, capsys, args, expected):
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.txt").write_text("imgs/a.png\nnope.png\n")
    names = {"imgs": images, "empty": tmp_path / "empty", "list": tmp_path / "list.txt"}
    args = [a.format(tmp=tmp_path, **names) for a in args]
    code = main(["embed", "--model", "random_init", *args])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code != 0
    lines = _lines(text)
    assert len(lines) == 1, text
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in text
    assert not (cache / "features").exists()  # nothing was embedded


def test_unknown_model_is_one_line(images, cache, capsys):
    code = main(["embed", "--model", "random_inti", str(images)])
    lines = _lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1
    assert "unknown model 'random_inti'; did you mean 'random_init'" in lines[0]
