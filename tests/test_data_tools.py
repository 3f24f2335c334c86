"""`fundbench data verify / duplicates / contamination / info` on fake official layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from fake_layouts.dr import build_aptos2019, build_idrid

from fundbench.cli.main import main
from fundbench.data.contamination import contamination_table, evidence
from fundbench.data.datasets import load_dataset
from fundbench.data.duplicates import ImageSet, find_duplicates, near_pairs
from fundbench.host.loading import Host


@pytest.fixture(scope="module")
def host():
    return Host().load_entry_points()


def test_verify_reports_counts_missing_unexpected_unreadable_and_writes_manifest(
    tmp_path, capsys, host
):
    build_aptos2019(tmp_path)
    root = tmp_path / "aptos2019"
    images = sorted((root / "train_images").glob("*.png"))
    images[0].unlink()  # listed, absent
    images[1].write_bytes(b"not a png")  # listed, unreadable
    shutil.copy(images[2], root / "train_images" / "stray.png")  # on disk, in no label file
    manifest = tmp_path / "m.csv"
    code = main(["data", "verify", "aptos2019", "--root", str(root), "--manifest", str(manifest)])
    out = capsys.readouterr().out
    assert code == 1  # missing and unreadable files fail the check
    assert "1 missing" in out and images[0].name in out
    assert "1 unexpected" in out and "stray.png" in out
    assert "1 unreadable" in out and images[1].name in out
    table = pd.read_csv(manifest, comment="#")
    assert list(table.columns) == ["path", "sha256", "label", "patient", "eye", "split"]
    assert len(table) == 10 and table["path"].str.startswith("train_images/").all()
    assert table["sha256"].str.len().eq(64).all()


def test_verify_manifest_digest_is_the_one_runs_record(tmp_path, capsys, host):
    build_idrid(tmp_path)
    manifest = tmp_path / "idrid.manifest.csv"
    # --root may be the folder holding the dataset folder
    code = main(["data", "verify", "idrid", "--root", str(tmp_path), "--manifest", str(manifest)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "train" in out and "test" in out and "total" in out
    digest = load_dataset("idrid", host=host, data_root=tmp_path).manifest_digest
    assert f"manifest_digest={digest}" in manifest.read_text().splitlines()[0]


def test_near_pairs_by_hamming_distance():
    a = [0b0, 0b1011, (1 << 63) | 0b1, 0b111111]
    hashes = pd.Series(a, dtype="uint64").to_numpy()
    pairs = near_pairs(hashes, max_distance=3)
    # distances: 0-1 3, 0-2 2, 0-3 6, 1-2 3, 1-3 3, 2-3 6; each pair once, i < j
    assert sorted(pairs) == [(0, 1, 3), (0, 2, 2), (1, 2, 3), (1, 3, 3)]
    assert near_pairs(hashes, max_distance=1) == []
    across = near_pairs(hashes[:1], hashes[3:], max_distance=6)
    assert across == [(0, 0, 6)]


def test_duplicates_across_splits_and_across_sets(tmp_path, host):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i in range(4):
        arr = (rng.random((64, 64, 3)) * 255).astype("uint8")
        Image.fromarray(arr).resize((256, 256)).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    # a re-encoded, resized copy of image 0
    Image.open(paths[0]).resize((200, 200)).save(folder / "copy.jpg", quality=90)
    first = ImageSet("a", paths + [str(folder / "copy.jpg")], ["train"] * 4 + ["test"])
    pairs = find_duplicates(first)
    assert list(pairs["kind"]) == ["across splits"]
    assert {pairs["image_a"][0], pairs["image_b"][0]} == {paths[0], str(folder / "copy.jpg")}
    other = tmp_path / "pretraining"
    other.mkdir()
    shutil.copy(paths[3], other / "x.png")
    across = find_duplicates(ImageSet("a", paths, ["test"] * 4), ImageSet.from_folder(other))
    assert list(across["kind"]) == ["across sets"] and across["image_a"][0] == paths[3]


def test_duplicates_command_reads_datasets_and_folders(tmp_path, capsys):
    build_aptos2019(tmp_path)
    img = tmp_path / "aptos2019" / "train_images"
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(next(img.glob("*.png")), extra / "dup.png")
    code = main(
        [
            "data",
            "duplicates",
            "aptos2019",
            str(extra),
            "--data-root",
            str(tmp_path),
            "-o",
            str(tmp_path / "pairs.csv"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 across sets" in out
    assert len(pd.read_csv(tmp_path / "pairs.csv")) == 1


def test_contamination_table_and_flags(host, tmp_path):
    table = contamination_table(
        host, ["flair", "keepfit_v1", "retfound_cfp", "random_init"], ["aptos2019", "idrid"]
    )
    assert table.loc["aptos2019", "flair"] == "seen" and table.loc["idrid", "keepfit_v1"] == "seen"
    assert table.loc["aptos2019", "random_init"] == ""
    definition = host.datasets.get("aptos2019").obj
    # a model's own list is matched on normalised names and aliases
    assert evidence("acme", ("APTOS-2019",), definition)
    assert evidence("acme", ("15_APTOS",), definition)
    assert not evidence("acme", ("eyepacs",), definition)


def test_results_on_seen_pairs_carry_the_flag(toy_host, tmp_path, monkeypatch):
    """A model that declares pretraining on 'Synth-Glaucoma' gets every result on
    synth_glaucoma flagged (name matching ignores case and punctuation), others not."""
    import toy_plugin

    from fundbench import RunConfig, load_results, run
    from fundbench.runs.records import iter_records

    monkeypatch.setattr(toy_plugin.ToyClip, "pretraining_datasets", ("Synth-Glaucoma",))
    out = tmp_path / "out"
    config = RunConfig(
        models=["toy_clip"],
        datasets=["toy_csv", "synth_glaucoma"],
        tasks=["linear_probe"],
        out=out,
        bootstrap=10,
        limit=4,
    )
    run(config, toy_host)
    flags = load_results(out).groupby("dataset")["seen_in_pretraining"].all().to_dict()
    assert flags == {"toy_csv": False, "synth_glaucoma": True}
    record = next(r for r in iter_records(out) if r["cell"]["dataset"] == "synth_glaucoma")
    assert record["contamination"]["evidence"] == [
        "toy_clip declares pretraining on 'Synth-Glaucoma'"
    ]


def test_info_says_where_to_get_it(capsys):
    assert main(["data", "info", "idrid"]) == 0
    out = capsys.readouterr().out
    assert "ieee-dataport.org" in out and "CC BY 4.0" in out
    assert "no_dr, mild_npdr, moderate_npdr, severe_npdr, pdr" in out and "flair" in out


def test_verify_works_on_a_generated_synthetic_dataset(tmp_path, capsys, host):
    dataset = load_dataset("synth_glaucoma", host=host)
    folder = Path(dataset.table["path"].iloc[0]).parents[1]  # <folder>/images/<file>
    manifest = tmp_path / "m.csv"
    code = main(
        ["data", "verify", "synth_glaucoma", "--root", str(folder), "--manifest", str(manifest)]
    )
    assert code == 0, capsys.readouterr().out
    assert f"manifest_digest={dataset.manifest_digest}" in manifest.read_text().splitlines()[0]
