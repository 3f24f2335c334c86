"""The plugin host: safe loading, attribution of failures, name suggestions."""

from __future__ import annotations

import types

import pytest

from fundbench import hookimpl
from fundbench.errors import ConfigError
from fundbench.host import Host, get_host
from fundbench.registry import PluginInfo


def _plugin(**hooks) -> types.ModuleType:
    module = types.ModuleType("fake_plugin")
    for name, fn in hooks.items():
        setattr(module, name, hookimpl(fn))
    return module


def test_builtin_plugins_register_through_entry_points():
    host = get_host()
    names = {(p.name, p.distribution) for p in host.plugins}
    assert ("random_init", "fundbench") in names
    assert ("definitions", "fundbench") in names
    assert "random_init" in host.models
    assert host.models.get("random_init").plugin.distribution == "fundbench"
    assert {"zero_shot", "few_shot", "linear_probe"} <= set(host.tasks.names())
    assert "synthfundus" in host.suites


def test_plugin_raising_in_hook_is_reported_and_skipped():
    host = Host()

    def good(register):
        register("good_model", object)

    def bad(register):
        register("half_registered", object)
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
        register("dup", object)

    def second(register):
        register("dup", object)
        register("unique", object)

    host.add_plugin(_plugin(fundbench_register_models=first), PluginInfo("a", "dist-a", "1"))
    host.add_plugin(_plugin(fundbench_register_models=second), PluginInfo("b", "dist-b", "1"))
    assert host.models.get("dup").plugin.distribution == "dist-a"
    assert "unique" in host.models
    assert any("dist-a" in p and "dist-b" in p for p in host.problems)


def test_hookimpl_with_unknown_name_is_rejected():
    host = Host()

    def fundbench_register_modles(register):  # typo: matches no hookspec
        register("x", object)

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
