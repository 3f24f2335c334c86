"""The HTML report as a person sees it: real toy runs, rendered in headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/setup.sh`` installs them as
root); without them every test here fails with a one-line message saying how to install them.
Nothing is downloaded and nothing is skipped.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import toy_plugin
from PIL import Image
from selenium.webdriver.common.by import By

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
    """Models with hostile and ordinary names, a text-less model and a dataset not on disk."""

    FUNDBENCH_CONTRACT = "2.0"

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


@pytest.fixture(scope="module")
def host(toy_data) -> Host:
    find_browser()  # no Chromium: fail here at once, with the apt-get command, not per test
    host = Host().load_entry_points()
    toy_plugin.DATA_DIR = toy_data
    assert host.add_plugin(toy_plugin, PluginInfo("toy", "fundbench-tests", "0.0")), host.problems
    assert host.add_plugin(BrowserToys(), PluginInfo("browser_toys", "fundbench-tests", "0.0"))
    assert not host.problems, host.problems
    return host


def _report(host: Host, out: Path, models: list[str], **kw) -> Path:
    """Run ``models`` on the toy dataset (tiny settings) and render its report."""
    config = RunConfig(
        models=models,
        suite="toy",
        datasets=kw.pop("datasets", ["toy_csv"]),
        tasks=["zero_shot", "few_shot_quick", "linear_probe"],
        shots=[1, 2],
        seeds=1,
        bootstrap=10,
        out=out,
        report=False,
        **kw,
    )
    run(config, host)
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
