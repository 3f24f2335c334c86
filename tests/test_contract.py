"""Plugin contract 2: typed specs, the contract version, run-time contract checks and the
conformance kit, each against deliberately broken toy plugins (tests/broken_plugin.py)."""

from __future__ import annotations

import json
import types

import broken_plugin
import pytest
import torch
import toy_plugin

from fundbench import Licence, Model, PreprocessConfig, RunConfig, Verification, hookimpl, run
from fundbench.api.errors import PluginError
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.models.build import build_model
from fundbench.models.contract import ContractError
from fundbench.runs.records import iter_records
from fundbench.testing import model_checks, run_checks

BROKEN_INFO = PluginInfo("broken", "fundbench-broken-toys", "0.9")


@pytest.fixture
def host(toy_host) -> Host:
    assert toy_host.add_plugin(broken_plugin, BROKEN_INFO), toy_host.problems
    return toy_host


def _module(contract: object = "2.0", **hooks) -> types.ModuleType:
    module = types.ModuleType("contract_test_plugin")
    if contract is not None:
        module.FUNDBENCH_CONTRACT = contract
    for name, fn in hooks.items():
        setattr(module, name, hookimpl(fn))
    return module


def _models(**spec):
    def fundbench_register_models(register):
        register("acme", toy_plugin.ToyClip, **spec)

    return fundbench_register_models


# -- the typed spec -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"embeddim": 32}, "unknown field 'embeddim'; did you mean 'embed_dim'?"),
        ({"embed_dim": "32"}, "field 'embed_dim': expected an integer, got '32'"),
        ({"licence": None}, "missing required field(s) ['licence']"),
        ({"modalities": ("cfp", "xray")}, "modalities ['xray'] are not among"),
        ({"paper": {"title": "Acme", "arxiv": "2401.01234"}}, "not an arXiv id with its version"),
        ({"checkpoints": [{"sha256": "abc", "source": "x"}]}, "not 64 lowercase hex digits"),
        ({"verification": {"status": "verfied"}}, "is not one of"),
        ({"reference_code": {"repo": "https://x", "commit": "main"}}, "not a 40-digit hex"),
    ],
)
def test_a_bad_spec_refuses_the_plugin_in_one_line_naming_it_and_the_field(change, message):
    spec = {**toy_plugin.SPEC, **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    host = Host()
    assert not host.add_plugin(
        _module(fundbench_register_models=_models(**spec)), PluginInfo("acme", "acme-dist", "1.0")
    )
    (problem,) = host.problems
    assert "\n" not in problem
    assert "acme-dist 1.0" in problem and "model 'acme'" in problem and message in problem
    assert "acme" not in host.models


def test_a_spec_is_typed_and_listed_without_building():
    spec = {
        **toy_plugin.SPEC,
        "paper": {"title": "Acme retina", "arxiv": "2401.01234v2", "venue": "MICCAI 2024"},
        "reference_code": {"repo": "https://github.com/acme/retina", "commit": "a" * 40},
        "checkpoints": [{"sha256": "b" * 64, "source": "https://acme.org/w.pth", "file": "w.pth"}],
        "pretraining_datasets": ["EyePACS"],
    }
    host = Host()
    assert host.add_plugin(
        _module(fundbench_register_models=_models(**spec)), PluginInfo("acme", "acme-dist", "1.0")
    ), host.problems
    entry = host.models.get("acme")
    assert entry.spec.paper.arxiv == "2401.01234v2" and entry.spec.embed_dim == toy_plugin.DIM
    assert entry.spec.family == "acme"  # the name, when the plugin gives none
    assert entry.spec.is_known_checkpoint("b" * 64).file == "w.pth"
    assert entry.metadata["licence"]["weights_redistributable"] is True


# -- the contract version -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (None, "declares no contract version"),
        ("1.0", "was written for contract 1.0"),
        ("2.7", "was written for contract 2.7"),
        (2, 'use "MAJOR.MINOR"'),
    ],
)
def test_an_incompatible_plugin_is_refused_by_distribution_and_the_others_keep_working(
    declared, message
):
    host = Host()
    good = _module(fundbench_register_models=_models(**toy_plugin.SPEC))
    old = _module(declared, fundbench_register_models=_models(**toy_plugin.SPEC))
    assert not host.add_plugin(old, PluginInfo("old", "old-acme", "0.3"))
    assert host.add_plugin(good, PluginInfo("acme", "acme-dist", "1.0"))
    (problem,) = host.problems
    assert "plugin 'old' from old-acme 0.3" in problem and message in problem
    assert "\n" not in problem
    assert host.models.names() == ["acme"]


# -- run-time contract checks ---------------------------------------------------------------


def _run(host, out, model, tasks=("linear_probe",), **kw):
    config = RunConfig(
        models=[model],
        datasets=["toy_csv"],
        tasks=list(tasks),
        out=out,
        bootstrap=20,
        cache=out.parent / "cache",
        report=False,
        **kw,
    )
    return run(config, host=host)


@pytest.mark.parametrize(
    "name", ["toy_wrong_dim", "toy_nan", "toy_batch_dependent", "toy_unknown_digest"]
)
def test_a_broken_model_stops_the_run_before_any_record_naming_plugin_and_rule(
    host, tmp_path, name
):
    rule = broken_plugin.BROKEN[name][1]
    with pytest.raises(ContractError) as caught:
        _run(host, tmp_path / "out", name)
    message = str(caught.value)
    assert f"model {name!r}" in message and "fundbench-broken-toys 0.9" in message
    assert f"contract rule {rule!r}" in message and "\n" not in message
    records = tmp_path / "out" / "records"
    assert not records.exists() or not list(iter_records(tmp_path / "out"))


def test_a_constant_text_tower_makes_zero_shot_invalid_not_numbers(host, tmp_path):
    out = tmp_path / "out"
    summary = _run(host, out, "toy_constant_text", tasks=("zero_shot", "linear_probe"))
    records = list(iter_records(out))
    (zero,) = [r for r in records if r["cell"]["protocol"] == "zero_shot"]
    probes = [r for r in records if r["cell"]["protocol"] == "linear_probe"]
    assert zero["status"] == "invalid" and "metrics" not in zero
    assert "same embedding" in zero["reason"] and "text-distinct" in zero["reason"]
    assert probes and all(r["status"] == "ok" for r in probes)  # image embeddings are fine
    assert summary.invalid == 1 and summary.computed == len(probes)
    assert json.loads((out / "run.json").read_text())["cells"]["invalid"] == 1
    from fundbench.reporting.report import render_report

    html = render_report(out, tmp_path / "report.html").read_text()
    assert "Invalid cells" in html and "same embedding" in html
    # the registration's declaration, shown per model
    assert "code Apache-2.0; weights none (generated)" in html and ">native<" in html


def test_a_correct_model_passes_at_run_time(host, tmp_path):
    summary = _run(host, tmp_path / "out", "toy_clip", tasks=("zero_shot", "linear_probe"))
    assert summary.computed == 3 and summary.invalid == 0  # zero-shot, tuned and paper probes


def test_a_missing_digest_is_computed_from_the_held_tensors_and_follows_the_weights(host):
    class NoDigest(toy_plugin.ToyClip):
        def __init__(self, seed: int = 0):
            super().__init__()
            self.weights_digest = None
            self.projection = torch.randn(
                3 * 64, toy_plugin.DIM, generator=torch.Generator().manual_seed(seed)
            )

    entry = host.models.get("toy_clip")
    entry._obj = NoDigest
    a, b = build_model(entry, {}), build_model(entry, {"seed": 1})
    assert len(a.weights_digest) == 64 and a.weights_digest != b.weights_digest
    assert build_model(entry, {}).weights_digest == a.weights_digest


def test_a_model_without_preprocess_config_is_refused_at_build(host):
    class NoPreprocess(Model):
        name, embed_dim = "bare", toy_plugin.DIM
        weights_digest = "c" * 64

        def encode_images(self, batch):
            return batch.mean(dim=(2, 3)).repeat(1, 11)[:, : self.embed_dim]

    entry = host.models.get("toy_clip")
    entry._obj = NoPreprocess
    with pytest.raises(ContractError, match="'preprocess-config'.*no preprocess_config"):
        build_model(entry, {})


def test_the_declared_size_is_checked_per_variant(host):
    from dataclasses import replace

    class Backbone(toy_plugin.ToyClip):
        embed_dim, variant = 16, "backbone"

        def encode_images(self, batch):
            return super().encode_images(batch)[:, :16]

    entry = host.models.get("toy_clip")
    entry._obj = Backbone
    with pytest.raises(ContractError, match="declares 32 for variant 'backbone'"):
        build_model(entry, {})
    entry.spec = replace(entry.spec, variant_embed_dims={"backbone": 16})
    assert build_model(entry, {}).embed_dim == 16
    entry.spec = replace(entry.spec, variant_embed_dims={}, embed_dim_from_options=True)
    assert build_model(entry, {}).embed_dim == 16  # the first batch still checks the output


def test_the_device_reaches_a_factory_only_when_its_spec_says_so(host):
    seen = {}

    def factory(**options):
        seen.update(options)
        return toy_plugin.ToyClip()

    entry = host.models.get("toy_clip")
    entry._obj = factory
    build_model(entry, {}, device="cpu")
    assert "device" not in seen
    from dataclasses import replace

    entry.spec = replace(entry.spec, takes_device=True)
    build_model(entry, {}, device="cpu")
    assert seen["device"] == "cpu"


def test_model_to_moves_nested_modules_and_tensors():
    class Nested(Model):
        name, embed_dim = "nested", 4
        preprocess_config = PreprocessConfig(resolution=8)

        def __init__(self):
            self.towers = {"image": [torch.nn.Linear(3, 4)], "scale": torch.ones(1)}
            self.pair = (torch.nn.Linear(4, 4), torch.zeros(2))

        def encode_images(self, batch):
            return self.pair[0](self.towers["image"][0](batch.mean(dim=(2, 3))))

    model = Nested().to("meta")
    assert sorted(model.tensors()) == ["pair[0]", "pair[1]", "towers.image[0]", "towers.scale"]
    assert all(
        (t.device if isinstance(t, torch.Tensor) else next(t.parameters()).device).type == "meta"
        for t in model.tensors().values()
    )


# -- the conformance kit --------------------------------------------------------------------


def _kit(host, name):
    import fundbench.host.loading as loading

    previous, loading._default = loading._default, host
    try:
        return {r.name: r for r in run_checks(model_checks(name))}
    finally:
        loading._default = previous


def test_the_kit_passes_a_correct_model_on_every_check(host):
    results = _kit(host, "toy_clip")
    assert len(results) == 11
    assert all(r.passed for r in results.values()), [r.message for r in results.values()]


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("toy_wrong_dim", "embedding-shape"),
        ("toy_nan", "embedding-shape"),
        ("toy_batch_dependent", "batch-invariance"),
        ("toy_unknown_digest", "builds"),
        ("toy_constant_text", "text-tower"),
    ],
)
def test_the_kit_catches_each_broken_model_naming_plugin_and_rule(host, name, check):
    results = _kit(host, name)
    failed = {n for n, r in results.items() if not r.passed}
    assert check in failed
    rule = broken_plugin.BROKEN[name][1]
    message = results[check].message
    assert f"'{rule}'" in message and "fundbench-broken-toys" in message


def test_the_kit_catches_train_mode_autograd_and_unmoved_tensors():
    class Sloppy(Model):
        name, embed_dim = "sloppy", 4
        preprocess_config = PreprocessConfig(resolution=16)

        def __init__(self):
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(768, 4), torch.nn.Dropout(0.5)
            )  # left in train mode
            self.hidden = _Holder(torch.ones(4))  # a tensor inside a plain object

        def encode_images(self, batch):
            with torch.enable_grad():
                return self.net(batch) * self.hidden.value

    results = {r.name: r for r in run_checks(model_checks(Sloppy))}
    assert not results["eval-mode"].passed and "training mode" in results["eval-mode"].message
    assert not results["determinism"].passed
    assert not results["no-autograd-leak"].passed
    assert results["builds"].passed


class _Holder:
    def __init__(self, value):
        self.value = value


def test_a_model_that_does_not_build_fails_once_and_the_rest_are_not_run():
    calls = []

    def factory():
        calls.append(1)
        raise RuntimeError("weights server unreachable")

    results = run_checks(model_checks(factory))
    assert not results[0].passed and not results[0].not_run
    assert "weights server unreachable" in results[0].message
    assert all(r.not_run and "does not build" in r.message for r in results[1:])
    assert len(calls) == 1  # built once, not once per check


def test_check_model_gives_one_pytest_test_per_rule():
    from fundbench.testing import check_model

    test = check_model(toy_plugin.ToyClip)
    marks = [m for m in test.pytestmark if m.name == "parametrize"]
    (mark,) = marks
    ids = mark.kwargs["ids"]
    assert ids[:3] == ["builds", "preprocess", "embedding-shape"] and len(ids) == 11
    for check in mark.args[1]:
        check()  # ToyClip passes each


def test_plugins_check_on_the_command_line_reports_each_rule(host, capsys, monkeypatch):
    import fundbench.host.loading as loading
    from fundbench.cli.main import main

    monkeypatch.setattr(loading, "_default", host)
    assert main(["plugins", "check", "toy_clip"]) == 0
    out = capsys.readouterr()
    assert "batch-invariance" in out.out and "all checks passed" in out.err
    assert main(["plugins", "check", "toy_nan"]) == 1
    out = capsys.readouterr()
    assert "FAIL" in out.out and "check(s) failed" in out.err
    assert main(["plugins", "check", "broken"]) == 1  # every model of the entry point


def test_a_plugin_raising_is_isolated(toy_host):
    def boom(register):
        register("half", toy_plugin.ToyClip, **toy_plugin.SPEC)
        raise RuntimeError("licence server down")

    assert not toy_host.add_plugin(
        _module(fundbench_register_models=boom), PluginInfo("boom", "boom-dist", "1")
    )
    assert "half" not in toy_host.models
    assert (
        "raised in fundbench_register_models (RuntimeError: licence server down)"
        in (toy_host.problems[-1])
    )
    assert isinstance(PluginError("x"), Exception)


def test_registration_metadata_must_be_typed_for_every_kind():
    def executors(register):
        register("fast", "acme.exec:Fast", descripton="typo")

    host = Host()
    assert not host.add_plugin(
        _module(fundbench_register_executors=executors), PluginInfo("ex", "ex-dist", "1")
    )
    assert "unknown field 'descripton'; did you mean 'description'?" in host.problems[0]


def test_licence_is_shown_by_list_models(host, capsys, monkeypatch):
    import fundbench.host.loading as loading
    from fundbench.cli.main import main

    monkeypatch.setattr(loading, "_default", host)
    assert main(["list", "models", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    meta = rows["toy_clip"]["metadata"]
    assert meta["licence"]["code"] == "Apache-2.0" and meta["verification"]["status"] == "native"
    assert meta["embed_dim"] == toy_plugin.DIM
    assert main(["list", "models"]) == 0
    assert "Apache-2.0" in capsys.readouterr().out


def test_the_kit_checks_dataset_readers(toy_host, toy_data):
    import pandas as pd

    from fundbench.testing import check_dataset_reader, dataset_reader_checks

    definition = toy_host.datasets.get("toy_csv").obj
    reader = toy_host.formats.get("csv").obj
    assert all(r.passed for r in run_checks(dataset_reader_checks(reader, definition)))

    def leaky(definition, root):  # splits by image: patients end up on both sides
        table = reader(definition, root)
        return table.assign(
            split=["train", "test"] * (len(table) // 2) + ["train"] * (len(table) % 2)
        )

    results = {r.name: r for r in run_checks(dataset_reader_checks(leaky, definition))}
    assert not results["patient-disjoint"].passed
    assert "appear in more than one split" in results["patient-disjoint"].message
    assert results["columns"].passed

    def no_label(definition, root):
        return pd.DataFrame({"path": reader(definition, root)["path"]})

    results = {r.name: r for r in run_checks(dataset_reader_checks(no_label, definition))}
    assert "lacks ['label']" in results["columns"].message
    test = check_dataset_reader(reader, definition)
    assert [m.kwargs["ids"] for m in test.pytestmark][0][0] == "columns"


def test_check_light_import_names_what_an_entry_point_pulls_in():
    from fundbench.testing import CheckFailed, check_light_import

    check_light_import("fundbench.builtin.protocols", "fundbench.builtin.loggers")
    with pytest.raises(CheckFailed, match=r"importing fundbench.api.model imported \['torch'"):
        check_light_import("fundbench.api.model")


_ = Licence, Verification  # re-exported by fundbench for plugins
