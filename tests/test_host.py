"""The plugin host: safe loading, attribution of failures, name suggestions."""

from __future__ import annotations

import types

import pytest
import toy_plugin

from fundbench import hookimpl
from fundbench.api.errors import ConfigError
from fundbench.host.loading import Host, get_host
from fundbench.host.registry import PluginInfo

SPEC = toy_plugin.SPEC


def _plugin(**hooks) -> types.ModuleType:
    module = types.ModuleType("fake_plugin")
    module.FUNDBENCH_CONTRACT = "2.0"
    for name, fn in hooks.items():
        setattr(module, name, hookimpl(fn))
    return module


#: every built-in model -> the plugin distribution (plugins/<distribution>/) that registers it
BUILTIN_MODELS = {
    "random_init": "fundbench-random-init",
    "flair": "fundbench-flair",
    "keepfit_v1": "fundbench-keepfit-v2",
    "keepfit_v2": "fundbench-keepfit-v2",
    "retfound_cfp": "fundbench-retfound",
    "retfound_oct": "fundbench-retfound",
    "retfound_dinov2": "fundbench-retfound",
    "timm": "fundbench-backbones",
    "hf": "fundbench-backbones",
    **{
        name: "fundbench-fms"
        for name in (
            "retfound_green",
            "retizero",
            "visionfm_fundus",
            "visionfm_oct",
            "visionfm_ffa",
            "urfound",
            "dinoret",
            "dinoret_be",
            "dinoret_lora",
            "eyeclip",
            "ret_clip",
        )
    },
}


def test_builtin_plugins_register_through_entry_points():
    host = get_host()
    names = {(p.name, p.distribution) for p in host.plugins}
    assert ("random_init", "fundbench-random-init") in names
    assert ("definitions", "fundbench") in names
    assert {e.name: e.plugin.distribution for e in host.models} == BUILTIN_MODELS
    # the core's own built-ins stay in the core distribution
    assert {p.distribution for p in host.plugins if p.name in {"definitions", "formats"}} == {
        "fundbench"
    }
    assert {"zero_shot", "few_shot", "linear_probe"} <= set(host.tasks.names())
    assert "synthfundus" in host.suites


def test_plugin_raising_in_hook_is_reported_and_skipped():
    host = Host()

    def good(register):
        register("good_model", object, **SPEC)

    def bad(register):
        register("half_registered", object, **SPEC)
        raise RuntimeError("boom")

    assert host.add_plugin(
        _plugin(fundbench_register_models=good), PluginInfo("good", "good-dist", "1.0")
    )
    assert not host.add_plugin(
        _plugin(fundbench_register_models=bad), PluginInfo("bad", "bad-dist", "2.0")
    )
    assert host.models.names() == ["good_model"]  # nothing of the broken plugin survives
    assert len(host.problems) == 1
    assert "bad-dist 2.0" in host.problems[0] and "boom" in host.problems[0]


def test_duplicate_name_is_reported_with_both_distributions():
    host = Host()

    def first(register):
        register("dup", object, **SPEC)

    def second(register):
        register("dup", object, **SPEC)
        register("unique", object, **SPEC)

    host.add_plugin(_plugin(fundbench_register_models=first), PluginInfo("a", "dist-a", "1"))
    host.add_plugin(_plugin(fundbench_register_models=second), PluginInfo("b", "dist-b", "1"))
    assert host.models.get("dup").plugin.distribution == "dist-a"
    assert "unique" in host.models
    assert any("dist-a" in p and "dist-b" in p for p in host.problems)


def test_hookimpl_with_unknown_name_is_rejected():
    host = Host()

    def fundbench_register_modles(register):  # typo: matches no hookspec
        register("x", object, **SPEC)

    module = types.ModuleType("typo")
    module.fundbench_register_modles = hookimpl(fundbench_register_modles)
    assert not host.add_plugin(module, PluginInfo("typo", "typo-dist", "0.1"))
    assert "typo-dist" in host.problems[0]


def test_unknown_name_suggests_close_matches():
    host = get_host()
    with pytest.raises(ConfigError, match=r"did you mean 'random_init'"):
        host.models.get("random_int")
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        host.datasets.get("nope")


def test_disabled_plugins_env(monkeypatch):
    monkeypatch.setenv("FUNDBENCH_DISABLED_PLUGINS", "random_init")
    host = Host().load_entry_points()
    assert "random_init" not in host.models
    assert "synthfundus" in host.suites


# -- lazy registration ----------------------------------------------------------------------


def test_builtin_models_register_lazily_and_resolve_on_first_use():
    host = Host().load_entry_points()
    entries = {e.name: e for e in host.models}
    assert not any(e.loaded for e in entries.values())  # nothing imported by registering
    assert entries["flair"].target == "fundbench_flair.model:FLAIRModel"
    from fundbench_random_init.model import RandomInitModel

    assert entries["random_init"].obj is RandomInitModel and entries["random_init"].loaded
    member = host.models.get("timm:resnet18")
    assert not member.loaded and member.spec.parametric is False and member.spec.family == "timm"
    assert member.obj.func.__name__ == "TimmModel" and member.obj.args == ("resnet18",)


def test_lazy_factory_that_fails_to_import_is_a_plugin_error_naming_the_distribution():
    from fundbench.api.errors import PluginError
    from fundbench.host.registry import lazy
    from fundbench.models.build import build_model

    def models(register):
        register(
            "ghost", "fundbench_no_such_module.model:Ghost", description="never imports", **SPEC
        )
        register("broken", lazy(lambda: 1 / 0, "acme.broken:Model"), **SPEC)

    host = Host()
    assert host.add_plugin(
        _plugin(fundbench_register_models=models), PluginInfo("g", "ghost-dist", "2.0")
    )
    assert host.models.get("ghost").metadata["description"] == "never imports"  # listed
    with pytest.raises(PluginError) as info:
        build_model(host.models.get("ghost"), {})
    message = str(info.value)
    assert "\n" not in message and "ghost-dist 2.0" in message
    assert "fundbench_no_such_module.model:Ghost" in message and "ModuleNotFoundError" in message
    with pytest.raises(PluginError, match=r"acme\.broken:Model \(ZeroDivisionError"):
        host.models.get("broken").load()


def test_malformed_reference_is_reported_at_registration():
    def models(register):
        register("fine", object, **SPEC)
        register("typo", "no colon here", **SPEC)

    host = Host()
    assert not host.add_plugin(
        _plugin(fundbench_register_models=models), PluginInfo("t", "t-dist", "1")
    )
    assert "fine" not in host.models  # a plugin whose hook raised is discarded as a whole
    assert "t-dist" in host.problems[0] and "model 'typo'" in host.problems[0]
