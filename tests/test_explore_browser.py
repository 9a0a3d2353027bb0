"""The explorer in a real headless browser: Debian's chromium driven by selenium through
chromium-driver (both from apt; browsers are never downloaded). Skipped, with the reason, when
any of them is missing.

Screenshots of a few steps go to ``$VMO_SCREENSHOTS`` (default ``build/screenshots`` in the
checkout, git-ignored); ``docs/images/explore.png`` in the README is one of them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmo.cli.explore import serve
from vmo.explore.app import ExplorerApp
from vmo.explore.replay import load
from vmo.explore.session import Session, demo_session

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SHOTS = Path(os.environ.get("VMO_SCREENSHOTS", ROOT / "build" / "screenshots"))

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    _selenium_missing = ""
except ImportError as e:  # pragma: no cover - depends on the machine
    _selenium_missing = f"selenium is not installed ({e}); pip install selenium"

if _selenium_missing:
    _why = _selenium_missing
elif CHROMIUM is None:
    _why = "no chromium (apt-get install chromium chromium-driver)"
elif CHROMEDRIVER is None:
    _why = "no chromedriver (apt-get install chromium-driver)"
else:
    _why = ""

pytestmark = pytest.mark.skipif(bool(_why), reason=_why)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Served:
    def __init__(self, app: ExplorerApp) -> None:
        self.app = app
        self.server = serve(app, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.app.close()


@pytest.fixture
def live() -> Iterator[Served]:
    s = Served(ExplorerApp(session=Session()))
    yield s
    s.close()


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")


def submit(driver: Any, op: str, **fields: str) -> str:
    """Fill the form of ``op`` and submit it; returns the status line once the step shows."""
    before = driver.find_element(By.ID, "position").text
    form = driver.find_element(By.CSS_SELECTOR, f"form[data-op='{op}']")
    for name, value in fields.items():
        field = form.find_element(By.NAME, name)
        if field.tag_name == "select":
            Select(field).select_by_visible_text(value)
        else:
            field.clear()
            field.send_keys(value)
    form.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "position").text != before)
    return str(driver.find_element(By.ID, "status").text)


def nodes(driver: Any) -> list[Any]:
    return list(driver.find_elements(By.CSS_SELECTOR, "#tree g.node"))


def cell(driver: Any, node: int, off: int) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f"#tree rect.page[data-node='{node}']"
                                                f"[data-off='{off}']")


def shot(driver: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def test_snapshot_and_write_through_the_forms(browser: Any, live: Served) -> None:
    open_page(browser, live.url)
    assert nodes(browser) == []
    assert "OK" in submit(browser, "create", size="0x3000")
    assert "OK" in submit(browser, "write", koid="1", offset="0", text="hello")
    root_id = int(nodes(browser)[0].get_attribute("data-node"))
    assert cell(browser, root_id, 0).get_attribute("data-frame")
    assert "OK" in submit(browser, "child", koid="1", kind="snapshot", offset="0", size="")
    g = nodes(browser)
    assert [n.get_attribute("data-kind") for n in g] == ["hidden", "vmo", "vmo"]
    assert [n.get_attribute("data-koid") for n in g] == ["0", "1", "2"]
    hidden, left, right = (int(n.get_attribute("data-node")) for n in g)
    assert hidden == root_id  # the parent's node became the hidden node
    # Both sides see the hidden node's page 0: the parent's write copies it (split bit L).
    assert "OK" in submit(browser, "write", koid="1", offset="0", text="parent")
    assert cell(browser, hidden, 0).get_attribute("data-split") == "L"
    assert cell(browser, left, 0).get_attribute("data-frame")
    assert "changed" in cell(browser, left, 0).get_attribute("class")
    events = [li.get_attribute("data-kind")
              for li in browser.find_elements(By.CSS_SELECTOR, "#events li")]
    assert events == ["fork"]
    labels = browser.find_elements(By.CSS_SELECTOR, f"#tree g.node[data-node='{hidden}'] "
                                                    "text.split")
    assert [t.text for t in labels] == ["L"]
    shot(browser, "explore-fork")
    # Only the child still sees it now: its write migrates the page (no split bits left).
    assert "OK" in submit(browser, "write", koid="2", offset="0", text="child")
    assert browser.find_elements(By.CSS_SELECTOR,
                                 f"#tree rect.page[data-node='{hidden}'][data-frame]") == []
    assert cell(browser, right, 0).get_attribute("data-split") == ""
    # Closing the child merges the hidden node into the parent's node.
    assert "OK" in submit(browser, "close", koid="2")
    assert [n.get_attribute("data-kind") for n in nodes(browser)] == ["vmo"]
    # The timeline steps back to the three-node state.
    browser.find_element(By.ID, "prev").click()
    assert len(nodes(browser)) == 3
    browser.find_element(By.ID, "next").click()
    assert len(nodes(browser)) == 1


def test_bad_arguments_show_the_status_and_leave_the_kernel_valid(browser: Any,
                                                                   live: Served) -> None:
    open_page(browser, live.url)
    submit(browser, "create", size="0x2000")
    status = submit(browser, "write", koid="1", offset="0x5000", text="x")
    assert "ERR_OUT_OF_RANGE" in status
    box = browser.find_element(By.ID, "status")
    assert "error" in box.get_attribute("class")
    assert box.get_attribute("data-status") == "ERR_OUT_OF_RANGE"
    assert "ERR_INVALID_ARGS" in submit(browser, "write", koid="one", text="x")
    assert "ERR_BAD_HANDLE" in submit(browser, "close", koid="7")
    shot(browser, "explore-error")
    assert "OK" in submit(browser, "write", koid="1", offset="0", text="still fine")
    assert live.app.session is not None
    assert all(s["valid"] for s in live.app.session.steps)


def test_demo_steps_forward_and_back(browser: Any) -> None:
    app = ExplorerApp(session=demo_session(), title="demo")
    app.demo = True
    served = Served(app)
    try:
        open_page(browser, served.url)
        assert browser.find_element(By.ID, "position").text.startswith("step 0 of")
        counts = []
        for _ in range(len(app.session.steps) - 1):  # type: ignore[union-attr]
            browser.find_element(By.ID, "next").click()
            counts.append(len(nodes(browser)))
            if len(counts) == 10:
                shot(browser, "explore-demo")
        assert max(counts) >= 4 and counts[-1] >= 2
        assert "failed" not in " ".join(li.get_attribute("class") for li in
                                        browser.find_elements(By.CSS_SELECTOR, "#steps li"))
    finally:
        served.close()


def test_replay_a_repro_to_its_end(browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    served = Served(ExplorerApp(replay=load(str(ROOT / "tests/data/repro_fork_without_copy.py"))))
    try:
        open_page(browser, served.url)
        assert not browser.find_element(By.ID, "forms").is_displayed()
        slider = browser.find_element(By.ID, "timeline")
        last = int(slider.get_attribute("max"))
        for _ in range(last):
            browser.find_element(By.ID, "next").click()
        assert browser.find_element(By.ID, "position").text == f"step {last} of {last}"
        status = browser.find_element(By.ID, "status")
        assert "Mismatch" in status.text and "error" in status.get_attribute("class")
        differs = browser.find_elements(By.CSS_SELECTOR, "#compare tr.differs")
        assert len(differs) == 1 and differs[0].find_elements(By.TAG_NAME, "td")[0].text == \
            "koid 2"
        assert [n.get_attribute("data-kind") for n in nodes(browser)] == ["hidden", "vmo", "vmo"]
        shot(browser, "explore-replay")
    finally:
        served.close()
