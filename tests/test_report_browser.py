"""The HTML report as a person sees it: real toy runs, rendered in headless Chromium.

The run behind the newer sections (patient/eye levels, subgroup slices, the domain-shift
matrix, referral curves) computes them itself: a two-class toy dataset that declares a
``camera`` attribute and a domain-shift task onto it. Fine-tuned cells are added to its
records with the record writer (:mod:`report_fixtures`), a copy of the linear probe's.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/setup.sh`` installs them as
root); without them every test here fails with a one-line message saying how to install them.
Nothing is downloaded and nothing is skipped.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import toy_plugin
from PIL import Image
from report_fixtures import derive, metric, record_at
from selenium.webdriver.common.by import By
from toy_data import binary_definition, make_toy_csv_dataset

from fundbench import RunConfig, hookimpl, run
from fundbench.api.errors import ConfigError
from fundbench.api.model import Model
from fundbench.cli.main import main
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.reporting.report import render_report
from fundbench.reporting.screenshot import console_errors, find_browser, open_page

SPEC = toy_plugin.SPEC
pytestmark = pytest.mark.slow

HOSTILE = "<script>window.__pwned = 1</script><b>bold</b>"
#: Same toy model at other input sizes: distinct features and numbers for each "model".
RESOLUTIONS = {"toy_r8": 8, "toy_r12": 12, "toy_r20": 20, "toy_r24": 24}
NUMBER = re.compile(r"\d\.\d{2}")


class ToyVision(toy_plugin.ToyClip):
    """The toy model without its text tower: zero-shot and text adapters are not applicable."""

    name = "toy_vision"
    encode_texts = Model.encode_texts


class BrowserToys:
    """Models with hostile and ordinary names, a text-less model, a dataset not on disk, a
    two-class dataset with a ``camera`` attribute and a domain-shift task onto it."""

    FUNDBENCH_CONTRACT = "2.0"

    def __init__(self, binary_root: Path) -> None:
        self.binary_root = binary_root

    @hookimpl
    def fundbench_register_models(self, register) -> None:
        register(HOSTILE, toy_plugin.ToyClip, description="a display name holding HTML", **SPEC)
        register("toy_vision", ToyVision, description="toy model without a text tower", **SPEC)
        for name, resolution in RESOLUTIONS.items():
            register(name, functools.partial(toy_plugin.ToyClip, resolution=resolution), **SPEC)

    @hookimpl
    def fundbench_register_datasets(self, register) -> None:
        register(
            "toy_absent",
            {
                "id": "toy_absent",
                "modality": "cfp",
                "classes": ["red", "green", "blue"],
                "format": "csv",
                "options": {"path": "/nonexistent/fundbench-tests/toy_absent"},
            },
        )
        register("toy_binary", binary_definition(self.binary_root, ("camera",)))

    @hookimpl
    def fundbench_register_tasks(self, register) -> None:
        mapping = {"red": "red", "green": "other", "blue": "other"}
        register(
            "toy_shift",
            {
                "name": "toy_shift",
                "protocol": "domain_shift",
                "adapters": ["tuned"],
                "bootstrap": 10,
                "shifts": [
                    {"source": "toy_csv", "target": "toy_binary", "mapping": mapping},
                    {"source": "toy_absent", "target": "toy_binary", "mapping": mapping},
                ],
            },
        )


def _binary_dataset(root: Path) -> Path:
    """The toy images as red versus the rest, from two cameras, one with a hostile name."""
    root = make_toy_csv_dataset(root)
    table = pd.read_csv(root / "labels.csv")
    table["diagnosis"] = np.where(table["diagnosis"] == "red", "red", "other")
    table["camera"] = np.where(np.arange(len(table)) % 3 == 0, HOSTILE, "plain")
    table.to_csv(root / "labels.csv", index=False)
    return root


@pytest.fixture(scope="module")
def host(toy_data, tmp_path_factory) -> Host:
    find_browser()  # no Chromium: fail here at once, with the apt-get command, not per test
    host = Host().load_entry_points()
    toy_plugin.DATA_DIR = toy_data
    assert host.add_plugin(toy_plugin, PluginInfo("toy", "fundbench-tests", "0.0")), host.problems
    toys = BrowserToys(_binary_dataset(tmp_path_factory.mktemp("toy_binary")))
    assert host.add_plugin(toys, PluginInfo("browser_toys", "fundbench-tests", "0.0"))
    assert not host.problems, host.problems
    return host


def _report(host: Host, out: Path, models: list[str], **kw) -> Path:
    """Run ``models`` on the toy dataset (tiny settings) and render its report; ``before``
    changes the records first."""
    before = kw.pop("before", None)
    config = RunConfig(
        models=models,
        suite="toy",
        datasets=kw.pop("datasets", ["toy_csv"]),
        tasks=kw.pop("tasks", ["zero_shot", "few_shot_quick", "linear_probe"]),
        shots=[1, 2],
        seeds=1,
        bootstrap=10,
        out=out,
        report=False,
        **kw,
    )
    run(config, host)
    if before is not None:
        before(out)
    return render_report(out, out / "report.html")


def _page_facts(driver) -> dict:
    """What a reader would notice: tables, plots that did or did not decode, injected code."""
    return driver.execute_script(
        """
        const plots = [...document.querySelectorAll('img.plot')];
        return {
          results_tables: document.querySelectorAll('table.results').length,
          plots: plots.length,
          broken_images: [...document.images]
            .filter(i => !(i.complete && i.naturalWidth > 0))
            .map(i => i.className + ' ' + i.src.slice(0, 40)),
          external: [...document.querySelectorAll('[src],link[href]')]
            .map(e => e.getAttribute('src') || e.getAttribute('href'))
            .filter(u => !u.startsWith('data:') && !u.startsWith('#')),
          pwned: typeof window.__pwned,
          scripts: document.scripts.length,
        };
        """
    )


def _assert_loads_cleanly(driver, *, plots: bool = True) -> dict:
    facts = _page_facts(driver)
    assert console_errors(driver) == []
    assert facts["results_tables"] >= 1, facts
    assert facts["broken_images"] == [], facts
    assert facts["external"] == [], facts  # one self-contained file
    if plots:
        assert facts["plots"] >= 1, facts
    return facts


def test_hostile_model_name_is_text_not_markup(host, tmp_path):
    report = _report(host, tmp_path / "r", [HOSTILE, "toy_clip"])
    with open_page(report) as driver:
        facts = _assert_loads_cleanly(driver)
        assert facts["pwned"] == "undefined"
        text = driver.find_element(By.TAG_NAME, "body").text
        assert HOSTILE in text
        bold = [b for b in driver.find_elements(By.TAG_NAME, "b") if b.text == "bold"]
        assert bold == []
        cells = driver.find_elements(By.CSS_SELECTOR, "table.results td")
        assert any(cell.text == HOSTILE for cell in cells)


@pytest.mark.parametrize("n_models", [1, 2, 5])
def test_report_renders_for_several_model_counts(host, tmp_path, n_models):
    models = ["toy_clip", *RESOLUTIONS][:n_models]
    report = _report(host, tmp_path / "r", models)
    with open_page(report) as driver:
        _assert_loads_cleanly(driver)
        text = driver.find_element(By.TAG_NAME, "body").text
        cells = {c.text for c in driver.find_elements(By.CSS_SELECTOR, "table.results td")}
    for name in models:
        assert name in text and name in cells, name


def test_not_applicable_cells_show_their_reason(host, tmp_path):
    report = _report(
        host, tmp_path / "r", ["toy_vision", "toy_clip"], datasets=["toy_csv", "toy_absent"]
    )
    with open_page(report) as driver:
        _assert_loads_cleanly(driver)
        text = driver.find_element(By.TAG_NAME, "body").text
        reasons = [
            cell.text
            for cell in driver.find_elements(By.CSS_SELECTOR, "td, th")
            if "no text tower" in cell.text
        ]
    assert "toy_vision" in text
    assert "toy_absent" in text  # the dataset that was not on disk is named, not dropped
    assert reasons, "the reason 'model has no text tower' is not shown"
    assert not [r for r in reasons if NUMBER.search(r)], reasons  # a reason, not a score


#: the newer sections: anchor -> heading
NEW_SECTIONS = {
    "operating-points": "Clinical operating points",
    "levels": "Patient and eye level",
    "subgroups": "Subgroups",
    "domain-shift": "Domain shift",
}
FINE_TUNED = {"protocol": "fine_tune", "task": "fine_tune", "adapter": "full", "seed": 0}


def _add_fine_tuned(out: Path) -> None:
    """A fine-tuned cell beside each linear probe (its records have the same shape)."""
    for model in ("toy_clip", "toy_r12"):
        for dataset in ("toy_csv", "toy_binary"):
            base = record_at(out, model, dataset, "linear_probe", "tuned")
            metrics = {**base["metrics"], "aca": metric(0.987, 0.95, 1.0)}
            derive(out, base, FINE_TUNED, metrics=metrics)


def _texts(driver, css: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def test_newer_sections_are_visible_and_reachable_from_the_toc(host, tmp_path):
    report = _report(
        host,
        tmp_path / "r",
        ["toy_clip", "toy_r12"],
        datasets=["toy_csv", "toy_binary"],
        tasks=["linear_probe", "toy_shift"],
        before=_add_fine_tuned,
    )
    with open_page(report) as driver:
        facts = _assert_loads_cleanly(driver)
        assert facts["pwned"] == "undefined" and facts["scripts"] == 0
        links = driver.find_elements(By.CSS_SELECTOR, "nav a")
        nav = {a.get_attribute("href").rpartition("#")[2]: a for a in links}
        for anchor, heading in NEW_SECTIONS.items():
            section = driver.find_element(By.ID, anchor)
            assert section.is_displayed(), anchor
            assert section.find_element(By.TAG_NAME, "h2").text == heading
            assert anchor in nav and nav[anchor].is_displayed(), (anchor, list(nav))
            nav[anchor].click()
            assert driver.execute_script("return location.hash") == f"#{anchor}"
            top = driver.execute_script(
                "return [arguments[0].getBoundingClientRect().top, innerHeight]", section
            )
            assert -2 <= top[0] < top[1], (anchor, top)  # scrolled to it
        assert console_errors(driver) == []

        # referral curves: a table and a decoded plot, two-class cells only
        plot = driver.find_element(By.CSS_SELECTOR, 'img[alt="referral curves for toy_binary"]')
        assert plot.is_displayed() and driver.execute_script(
            "return arguments[0].naturalWidth", plot
        )
        cells = _texts(driver, "table.referral tbody td:first-child")
        assert cells == [f"{m} · toy_binary (Linear probe)" for m in ("toy_clip", "toy_r12")]

        # patient and eye level beside the image level
        levels = _texts(driver, "table.levels tbody td:first-child")
        assert levels.count("image") == 4 and "eye" in levels and "patient" in levels

        # subgroup slices: the hostile camera name is text; small slices are flagged
        values = _texts(driver, "table.subgroups tbody td:first-child")
        assert any(v.startswith(HOSTILE) for v in values), values
        flagged = driver.find_elements(By.CSS_SELECTOR, "table.subgroups tr.small .flag")
        assert flagged and all(f.is_displayed() and f.get_attribute("title") for f in flagged)

        # the domain-shift matrix: the diagonal, a shift cell, a not-applicable pair
        matrix = driver.find_element(By.CSS_SELECTOR, "table.shift")
        assert matrix.is_displayed()
        assert len(matrix.find_elements(By.CSS_SELECTOR, "td.diagonal")) == 2
        (shifted,) = matrix.find_elements(By.CSS_SELECTOR, "td.shift")
        assert NUMBER.search(shifted.text) and "n=" in shifted.text
        (na,) = matrix.find_elements(By.CSS_SELECTOR, "td.na:not(.none)")
        assert na.text == "n/a" and "toy_absent" in na.get_attribute("title")
        mapping = driver.find_element(By.CSS_SELECTOR, "#domain-shift p.mapping").text
        assert "toy_csv → toy_binary:" in mapping and "green → other" in mapping

        # fine-tuned beside the frozen-feature protocols, under its label
        boards = _texts(driver, "#summary h3")
        assert boards == ["Linear probe — headline ACA", "Fine-tuned — headline ACA"]
        tables = driver.find_elements(By.CSS_SELECTOR, 'table.results[data-protocol="fine_tune"]')
        assert len(tables) == 3 and all(t.is_displayed() for t in tables)  # board + 2 datasets
        assert "0.987" in tables[0].text
        assert "Fine-tuned · toy_csv" in _texts(driver, "#protocols h3")


def test_screenshot_command_writes_a_full_page_png(host, tmp_path, capsys):
    report = _report(host, tmp_path / "r", ["toy_clip"])
    png = tmp_path / "report.png"
    assert main(["screenshot", str(report), "-o", str(png), "--width", "900"]) == 0
    with Image.open(png) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width == 900
        assert height > 300  # the whole page, not an empty or clipped viewport
        low, high = image.convert("L").getextrema()
        assert high - low > 50  # something was drawn


def test_screenshot_command_errors_are_one_line(tmp_path, capsys):
    code = main(["screenshot", str(tmp_path / "nope.html"), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "nope.html: report file not found" in err
    assert "Traceback" not in err


def test_missing_browser_names_the_apt_command(monkeypatch):
    import fundbench.reporting.screenshot as screenshot

    monkeypatch.setattr(screenshot.shutil, "which", lambda name: None)
    monkeypatch.setattr(screenshot, "BROWSER_PATHS", ())
    monkeypatch.setattr(screenshot, "DRIVER_PATHS", ())
    with pytest.raises(ConfigError, match=r"chromium and chromedriver not found.*apt-get install "):
        screenshot.find_browser()
