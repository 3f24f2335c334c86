"""Property-based fuzzing of every parser of user files: dataset, task and suite definitions,
YAML, prompt files, run config files and result records. Each input gives either a typed
object or a :class:`~fundbench.api.errors.FundbenchError` that names the file, never another
exception (a TypeError, KeyError, UnicodeDecodeError, ...).

150 examples per test keep the file at a few seconds; for a deeper search set
``FUNDBENCH_FUZZ_EXAMPLES=5000``."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fundbench.api.definitions import (
    DatasetDefinition,
    SuiteDefinition,
    TaskDefinition,
    read_yaml,
)
from fundbench.api.errors import FundbenchError
from fundbench.data.prompts import PromptSet, load_prompts, read_prompt_file
from fundbench.models.weights import RunFile
from fundbench.runs.records import (
    INDEX_NAME,
    Predictions,
    iter_records,
    load_predictions,
    load_results,
    read_record,
    stored_fingerprint,
    validate_record,
    write_predictions,
    write_record,
)

FUZZ = settings(
    max_examples=int(os.environ.get("FUNDBENCH_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,  # nothing written to .hypothesis/
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SOURCE = "fuzzed/definition.yaml"

# -- values as YAML and JSON produce them --------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "{}", "a {} b", "cfp", "few_shot", "train", "0", "x.yaml", "~nouser"])
)
keys = st.text(max_size=8) | st.integers(-3, 3) | st.sampled_from(["id", "val", "test", "seed"])
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def mutated(base: dict) -> st.SearchStrategy[dict]:
    """``base`` with some keys deleted, some values replaced by anything, some keys added:
    close enough to valid that the parser gets past its first checks."""
    names = sorted(base)

    @st.composite
    def build(draw):
        data = dict(base)
        for key in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
            del data[key]
        for key in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
            data[key] = draw(values)
        if draw(st.booleans()):
            data.update(draw(st.dictionaries(keys, values, max_size=2)))
        return data

    return build()


def yaml_texts(base: dict) -> st.SearchStrategy[str]:
    """YAML text: a dump of a mutated mapping, sometimes cut or spliced with YAML syntax."""
    junk = st.sampled_from(
        ["", ":", "- ", "{", "[", "!!binary x", "!!python/object:os.system", "&a *b", "\t",
         "2001-13-45", "? [a]\n: b", "<<: 5", "%YAML 9.9\n---", "\x00", "\ud7ff", "'", '"']
    )  # fmt: skip

    @st.composite
    def build(draw):
        text = yaml.safe_dump(draw(mutated(base)), allow_unicode=True, sort_keys=False)
        cut = draw(st.integers(0, len(text)))
        return text[:cut] + draw(junk) + draw(st.text(max_size=6)) + text[cut:]

    return build() | st.text(max_size=60)


def names_file(exc: FundbenchError, path: Path | str) -> bool:
    message = str(exc)
    return str(path) in message and "\n" not in message


# -- dataset, task and suite definitions -----------------------------------------------------

VALID_DATASET = {
    "id": "fuzz_ds",
    "name": "Fuzz",
    "modality": "cfp",
    "classes": ["a", "b", "c"],
    "format": "csv",
    "options": {"file": "labels.csv"},
    "ordinal": True,
    "prompts": "glaucoma.yaml",
    "labels": {"0": "a", "1": "b", "2": None},
    "splits": {"val": 0.1, "test": 0.3, "seed": 0},
    "seen_by": ["flair"],
    "aliases": ["FZ"],
    "download": "https://example.org",
}
VALID_TASK = {
    "name": "fuzz_task",
    "protocol": "few_shot",
    "adapters": ["linear_probe"],
    "shots": [1, 2],
    "seeds": 2,
    "bootstrap": 100,
    "description": "x",
    "resplit": {"test": 0.2, "train": 0.5, "folds": 2},
}
VALID_SUITE = {
    "name": "fuzz_suite",
    "datasets": ["a", "b"],
    "tasks": ["zero_shot"],
    "paper": False,
    "description": "",
}
KINDS = {
    "dataset": (DatasetDefinition, VALID_DATASET),
    "task": (TaskDefinition, VALID_TASK),
    "suite": (SuiteDefinition, VALID_SUITE),
}


def test_the_valid_bases_parse():
    """The fuzzers start from valid mappings (else they would only test the first check)."""
    for kind, base in KINDS.values():
        assert isinstance(kind.from_mapping(dict(base), SOURCE), kind)


def _definition_or_named_error(kind, data) -> None:
    try:
        parsed = kind.from_mapping(data, SOURCE)
    except FundbenchError as exc:
        assert str(exc).startswith(SOURCE), exc
        assert "\n" not in str(exc)
        return
    assert isinstance(parsed, kind)
    if kind is DatasetDefinition:
        assert all(isinstance(c, str) for c in parsed.classes) and len(parsed.classes) >= 2
        assert isinstance(parsed.options, dict) and isinstance(parsed.ordinal, bool)
        assert all(isinstance(v, str) for v in parsed.seen_by + parsed.aliases)
    elif kind is TaskDefinition:
        assert all(isinstance(k, int) and k >= 1 for k in parsed.shots)
        assert isinstance(parsed.seeds, int) and parsed.seeds >= 1 and parsed.bootstrap >= 1
        assert all(isinstance(a, str) for a in parsed.adapters)
    else:
        assert all(isinstance(n, str) for n in parsed.datasets + parsed.tasks)


@pytest.mark.parametrize("kind", sorted(KINDS))
@FUZZ
@given(data=st.data())
def test_definitions_from_mapping_give_a_definition_or_a_named_error(kind, data):
    cls, base = KINDS[kind]
    _definition_or_named_error(cls, data.draw(mutated(base) | values))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("kind", sorted(KINDS))
@FUZZ
@given(data=st.data())
def test_definition_files_give_a_definition_or_a_named_error(kind, data, workdir):
    cls, base = KINDS[kind]
    path = workdir / f"{kind}.yaml"
    if data.draw(st.booleans()):
        path.write_text(data.draw(yaml_texts(base)), encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(data.draw(st.binary(max_size=80)))
    try:
        parsed = cls.from_mapping(read_yaml(path) or {}, str(path))
    except FundbenchError as exc:
        assert names_file(exc, path), exc
        return
    assert isinstance(parsed, cls)


# -- prompt files ------------------------------------------------------------------------------

VALID_PROMPTS = {"templates": ["a photo of {}.", "{}"], "classes": {"a": ["x"], "b": ["y", "z"]}}
PROMPT_DATASET = DatasetDefinition.from_mapping(
    {"id": "fuzz_ds", "modality": "cfp", "classes": ["a", "b"], "format": "csv"}
)


@FUZZ
@given(data=st.data())
def test_prompt_files_give_a_prompt_set_or_a_named_error(data, workdir):
    path = workdir / "prompts.yaml"
    choice = data.draw(st.integers(0, 3))
    if choice == 0:
        path.write_bytes(data.draw(st.binary(max_size=80)))
    elif choice == 1:
        path.write_text(data.draw(yaml_texts(VALID_PROMPTS)), errors="surrogatepass")
    else:
        content = data.draw(mutated(VALID_PROMPTS))
        if choice == 3:  # the per-dataset form
            content = {"datasets": data.draw(st.dictionaries(keys, st.just(content) | values))}
        path.write_text(yaml.safe_dump(content, allow_unicode=True))
    try:
        sets = read_prompt_file(path)
    except FundbenchError as exc:
        assert names_file(exc, path), exc
        return
    assert all(
        all(isinstance(t, str) and t.count("{}") == 1 for t in templates)
        and all(isinstance(d, str) for ds in classes.values() for d in ds)
        for templates, classes in sets.values()
    )
    try:
        prompts = load_prompts(PROMPT_DATASET, path)
    except FundbenchError as exc:
        assert names_file(exc, path), exc
        return
    assert isinstance(prompts, PromptSet) and set(prompts.descriptions) == {"a", "b"}
    assert len(prompts.digest) == 64


# -- run config files --------------------------------------------------------------------------

VALID_RUN_FILE = {
    "weights": {"flair": "w/flair.pth", "keepfit_v2": "/abs/k.pth"},
    "model_args": {"random_init": {"arch": "resnet10t"}},
    "data_root": "data",
    "dataset_roots": {"aptos2019": "~/aptos"},
}


@FUZZ
@given(data=st.data())
def test_run_config_files_give_a_run_file_or_a_named_error(data, workdir):
    path = workdir / "run.yaml"
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        path.write_bytes(data.draw(st.binary(max_size=80)))
    elif choice == 1:
        path.write_text(data.draw(yaml_texts(VALID_RUN_FILE)), errors="surrogatepass")
    else:
        content = data.draw(mutated(VALID_RUN_FILE) | values)
        path.write_text(yaml.safe_dump(content, allow_unicode=True))
    try:
        run_file = RunFile.load(path)
    except FundbenchError as exc:
        assert names_file(exc, path), exc
        return
    assert isinstance(run_file, RunFile) and run_file.path == path
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in run_file.weights.items())
    assert all(isinstance(v, dict) for v in run_file.model_args.values())
    assert run_file.data_root is None or isinstance(run_file.data_root, Path)
    assert all(isinstance(v, Path) for v in run_file.dataset_roots.values())


# -- result records ----------------------------------------------------------------------------

VALID_RECORD = {
    "schema_version": 1,
    "cell": {
        "model": "m",
        "dataset": "d",
        "task": "linear_probe",
        "protocol": "linear_probe",
        "adapter": "tuned",
        "k": None,
        "seed": None,
    },
    "fingerprint": "f" * 64,
    "status": "ok",
    "reason": None,
    "n_classes": 2,
    "classes": ["a", "b"],
    "n_train": 4,
    "n_test": 2,
    "metrics": {"aca": {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75}},
    "provenance": {
        "fundbench_version": "0.1.0",
        "plugin": {"plugin": "p", "distribution": "d", "version": "1"},
        "weights_digest": "w",
        "dataset_manifest_digest": "m",
        "preprocess_digest": "p",
        "packages": {},
        "device": "cpu",
    },
    "contamination": {"seen": False, "evidence": []},
}


def test_the_valid_record_is_valid():
    validate_record(VALID_RECORD)


@st.composite
def records(draw):
    record = draw(mutated(VALID_RECORD))
    if draw(st.booleans()) and isinstance(record.get("cell"), dict):
        record["cell"] = draw(mutated(VALID_RECORD["cell"]))
    if draw(st.booleans()) and isinstance(record.get("metrics"), dict):
        metric = draw(mutated(VALID_RECORD["metrics"]["aca"]))
        record["metrics"] = {draw(st.sampled_from(["aca", "auc", ""])): metric}
    return record


@FUZZ
@given(data=st.data())
def test_result_records_load_or_fail_naming_the_file(data, workdir):
    folder = workdir / "results"
    path = folder / "records" / "m" / "d" / "linear_probe" / "tuned.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        path.write_bytes(data.draw(st.binary(max_size=80)))
    elif choice == 1:
        text = json.dumps(data.draw(records()), allow_nan=True)
        path.write_text(text[: data.draw(st.integers(0, len(text)))])
    else:
        path.write_text(json.dumps(data.draw(records() | values), allow_nan=True))
    record = read_record(path)
    assert record is None or isinstance(record, dict)
    try:
        frame = load_results(folder, include_not_applicable=True)
        listed = list(iter_records(folder))
    except FundbenchError as exc:
        assert names_file(exc, path), exc
        return
    assert isinstance(frame, pd.DataFrame)
    assert len(listed) == (record is not None)
    if record is not None and record["status"] == "ok":
        assert len(frame) == len(record["metrics"])
        values_ = [m["value"] for m in record["metrics"].values()]
        assert all(v is None or isinstance(v, float | int) or math.isnan(v) for v in values_)


# -- predictions sidecars and fingerprint indexes ------------------------------------------


def _damaged(data, good: bytes) -> bytes:
    choice = data.draw(st.integers(0, 2))
    if choice == 0:  # truncated
        return good[: data.draw(st.integers(0, len(good)))]
    if choice == 1:  # some bytes changed
        damaged = bytearray(good)
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(good) - 1))
            damaged[i] = data.draw(st.integers(0, 255))
        return bytes(damaged)
    return data.draw(st.binary(max_size=400))


@FUZZ
@given(data=st.data())
def test_predictions_sidecars_load_or_fail_naming_the_file(data, workdir):
    predictions = Predictions.of(["a", "b"], [0, 1], [[0.7, 0.3], [0.4, 0.6]], patients=["p", "q"])
    folder = workdir / "sidecar"
    shutil.rmtree(folder, ignore_errors=True)
    ref = write_predictions(folder, predictions)
    path = folder / ref["file"]
    path.write_bytes(_damaged(data, path.read_bytes()))
    try:
        loaded = load_predictions({"predictions": ref}, folder=folder)
    except FundbenchError as exc:
        assert names_file(exc, path), exc
        return
    assert loaded.digest() == ref["sha256"]  # a change that left the content whole


@FUZZ
@given(data=st.data())
def test_a_damaged_fingerprint_index_is_read_or_ignored_never_an_error(data, workdir):
    """The index only accelerates: a damaged one is ignored, so the record is read; an entry
    damaged into another well-formed one can at worst make a cell be computed again."""
    out = workdir / "indexed"
    shutil.rmtree(out, ignore_errors=True)
    record = {**VALID_RECORD, "schema_version": 2}
    path = write_record(out, record)
    index = path.parent / INDEX_NAME
    if data.draw(st.booleans()):
        index.write_bytes(_damaged(data, index.read_bytes()))
    else:
        index.write_text(json.dumps({"version": 1, "records": {path.name: data.draw(values)}}))
    found = stored_fingerprint(path)
    assert found == VALID_RECORD["fingerprint"] or (found and found in index.read_text("latin-1"))
