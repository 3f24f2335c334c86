"""Open a report in the system's headless Chromium: screenshots and browser-level checks.

Only Debian's ``chromium`` and ``chromium-driver`` packages (or the same programs on PATH) are
used. Nothing is ever downloaded: the driver's path is always passed to selenium, so its
``selenium-manager`` (which would fetch a browser and driver) never runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fundbench.api.errors import ConfigError

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

APT_HINT = "apt-get install chromium chromium-driver"
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER_PATHS = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
DRIVER_NAMES = ("chromedriver",)
DRIVER_PATHS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
#: Viewport of the checks; screenshots use their own width.
WINDOW = (1400, 1000)
#: Chromium cannot capture taller pages in one image; longer reports are cut here.
MAX_HEIGHT = 16000


def _find(names: tuple[str, ...], paths: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return next((p for p in paths if os.access(p, os.X_OK)), None)


def find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths from PATH or Debian's locations; ConfigError if absent."""
    browser = _find(BROWSER_NAMES, BROWSER_PATHS)
    driver = _find(DRIVER_NAMES, DRIVER_PATHS)
    missing = [what for what, path in (("chromium", browser), ("chromedriver", driver)) if not path]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} not found on PATH or in /usr/bin; install with "
            f"`{APT_HINT}` (as root), or run `bash scripts/setup.sh` as root"
        )
    return browser, driver  # type: ignore[return-value]


def _selenium():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise ConfigError(
            "selenium is not installed; pip install 'fundbench[browser]' (or run scripts/setup.sh)"
        ) from None
    return webdriver, Service


@contextmanager
def open_page(html_path: str | Path, width: int = WINDOW[0]) -> Iterator[WebDriver]:
    """A headless Chromium driver showing ``html_path``; quits the browser on exit.

    Console messages are logged (``goog:loggingPrefs``) so :func:`console_errors` can read them.
    """
    html_path = Path(html_path)
    if not html_path.is_file():
        raise ConfigError(f"{html_path}: no such file")
    browser, driver_path = find_browser()
    webdriver, Service = _selenium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        f"--window-size={width},{WINDOW[1]}",
        # nothing in a report needs the network: no updates, no telemetry, no sync
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path is what keeps selenium-manager (a downloader) from running.
    service = Service(executable_path=driver_path)
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except Exception as exc:  # noqa: BLE001 - selenium's errors span several lines
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot start {browser} with {driver_path}: {first}") from exc
    try:
        driver.get(html_path.resolve().as_uri())  # returns after the load event
        _settle(driver)
        yield driver
    finally:
        driver.quit()


def _settle(driver: WebDriver) -> None:
    """Wait one frame and one task, so console messages reach the driver's log buffer
    (read right after the load event, the log is often still empty)."""
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "requestAnimationFrame(() => setTimeout(done, 0));"
    )


def console_errors(driver: WebDriver) -> list[str]:
    """SEVERE console messages (script errors, failed loads) since the last call."""
    _settle(driver)
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def save_screenshot(html_path: str | Path, png_path: str | Path, width: int = 1400) -> Path:
    """A full-page PNG of ``html_path``, ``width`` pixels wide (at most MAX_HEIGHT tall)."""
    if width < 200:
        raise ConfigError(f"--width {width}: need at least 200 pixels")
    png_path = Path(png_path)
    if not png_path.parent.is_dir():
        raise ConfigError(f"{png_path}: folder {png_path.parent} does not exist")
    with open_page(html_path, width) as driver:
        metrics = {"width": width, "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False}
        # The viewport (not the window with its frame) gets exactly ``width`` pixels, then the
        # document's own height, so one capture holds the whole page.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        height = driver.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
        )
        metrics["height"] = max(1, min(int(height), MAX_HEIGHT))
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        png = driver.get_screenshot_as_png()
    tmp = png_path.with_name(f".{png_path.name}.tmp")
    tmp.write_bytes(png)
    tmp.replace(png_path)
    return png_path
