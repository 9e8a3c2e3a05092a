"""The report in a real browser: headless Chromium (Debian `chromium` + `chromium-driver`) through Selenium.

Checks what a reader sees: the verdict on top, the downstream table, the base and adapted curves drawn in
their colours, and nothing fetched from anywhere. Saves a full-page screenshot. Also the tool that made
docs/report.png:  python -c "from tests.test_browser_report import screenshot; screenshot('reports/report.html',
'docs/report.png', max_height=2120)"
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# Flags for a headless run as root in a container, with nothing that phones home.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000", "--hide-scrollbars"]


@contextmanager
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS + [f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        # An explicit driver path: Selenium Manager (which would look for drivers online) never runs.
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def capture(driver, png: str | Path, max_height: int | None = None) -> tuple[int, int]:
    """A screenshot of the whole page (or its top max_height CSS pixels) at scale 1; returns its size."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    width, height = int(size["width"]), int(min(size["height"], max_height or size["height"]))
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    import base64

    Path(png).parent.mkdir(parents=True, exist_ok=True)
    Path(png).write_bytes(base64.b64decode(shot["data"]))
    return width, height


def screenshot(html: str | Path, png: str | Path, max_height: int | None = None) -> tuple[int, int]:
    with browser() as driver:
        driver.get(Path(html).resolve().as_uri())
        return capture(driver, png, max_height)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium not installed: apt-get install chromium chromium-driver (.ci/run does)")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from tests.test_compare_stage import BETTER, compare, write_inputs

    root = write_inputs(tmp_path_factory.mktemp("report"), BETTER)
    compare(root)
    return root / "reports" / "report.html"


@needs_chromium
def test_report_in_headless_chromium(report, tmp_path):
    pytest.importorskip("selenium", reason="selenium (a dev extra) is not installed: pip install -e '.[dev]'")
    from selenium.webdriver.common.by import By

    with browser() as driver:
        driver.get(report.resolve().as_uri())
        assert driver.title == "DAPT report"
        # the verdict is the first thing on the page, and says it in words
        verdict = driver.find_element(By.ID, "verdict")
        assert verdict.is_displayed()
        assert verdict.text.startswith("Adapting helped on the downstream task (triplet): accuracy 0.7640 adapted "
                                       "vs 0.7040 base, difference +0.0600, 95% CI [")
        first_heading = driver.find_elements(By.TAG_NAME, "h2")[0]
        assert verdict.rect["y"] < first_heading.rect["y"]
        # the downstream table, as rendered text
        row = driver.find_element(By.XPATH, "//table//tr[td[1]='accuracy']")
        cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
        assert cells[1:4] == ["0.7040 ± 0.0114", "0.7640 ± 0.0114", "+0.0600"] and cells[6] == "better"
        # both models' mean curves are drawn, in their colours, at a readable size, in both downstream plots
        for plot in ("train", "dev"):
            for model, rgb in (("base", "rgb(31, 119, 180)"), ("adapted", "rgb(214, 39, 40)")):
                path = driver.find_element(By.CSS_SELECTOR, f"g#{plot}-{model}-mean path")
                assert path.is_displayed()
                assert path.value_of_css_property("stroke") == rgb
                assert path.rect["width"] > 200, (plot, model, path.rect)
        assert driver.find_element(By.CSS_SELECTOR, "g#pretrain-held-out-mean path").is_displayed()
        # self-contained: the browser fetched nothing besides the page itself
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        width, height = capture(driver, tmp_path / "report.png")
    assert png_size(tmp_path / "report.png") == (width, height)
    assert width >= 1000 and height > 2000  # the whole page, not the viewport
    print(f"screenshot: {tmp_path / 'report.png'}")
