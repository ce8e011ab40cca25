"""The HTML report in a real browser (headless Chromium via selenium, offline, file:// only):
no console errors, no network request, clicking a map cell opens that head's card, the token view
reacts to hover, no page-wide horizontal scroll, and a crafted atlas runs nothing.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; where they are
missing every test here skips with the install command as its reason (``.ci/run`` installs them)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from test_report import PAYLOADS, make_report_atlas

pytestmark = pytest.mark.slow

INSTALL = ("apt-get install -y chromium chromium-driver && .venv/bin/pip install selenium "
           "(or .venv/bin/pip install -e '.[test]')")
PWN = ('<img src=x onerror="window.__pwned=1">', '</script><script>window.__pwned=1</script>',
       "<svg onload=window.__pwned=1>")


def _browser_paths() -> tuple[str, str]:
    chrome = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip(f"headless Chromium not found (chromium: {chrome}, chromedriver: {driver}); install: {INSTALL}")
    return chrome, driver


@pytest.fixture(scope="module")
def browser():
    chrome, driver_path = _browser_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"selenium is not installed; install: {INSTALL}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--disable-extensions", "--disable-background-networking", "--no-first-run", "--no-default-browser-check",
                "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        yield drv
    finally:
        drv.quit()


def _open(drv, path) -> None:
    drv.get_log("browser"), drv.get_log("performance")  # drop what earlier pages logged
    drv.get(path.as_uri())
    for _ in range(100):
        if drv.execute_script("return document.body && document.body.getAttribute('data-ready')") == "1":
            return
        time.sleep(0.1)
    raise AssertionError(f"the report's script did not finish; console: {drv.get_log('browser')}")


def _console_errors(drv) -> list[dict]:
    return [e for e in drv.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def _requests(drv) -> list[str]:
    urls = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            urls.append(msg["params"].get("request", {}).get("url") or msg["params"].get("url", ""))
    return urls


def _click_cell(drv, div_id: str, layer: int, head: int, axis: str = "") -> None:
    """A real mouse click on cell (layer, head) of the plotly heatmap in ``div_id``."""
    from selenium.webdriver.common.action_chains import ActionChains

    gd = drv.find_element("id", div_id)
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", gd)
    x, y, w, h = drv.execute_script(
        "var gd = arguments[0], fl = gd._fullLayout, xa = fl['xaxis' + arguments[3]], ya = fl['yaxis' + arguments[3]];"
        "var r = gd.getBoundingClientRect();"
        "return [xa._offset + xa.l2p(arguments[2]), ya._offset + ya.l2p(arguments[1]), r.width, r.height];",
        gd, layer, head, axis)
    ActionChains(drv).move_to_element_with_offset(gd, int(x - w / 2), int(y - h / 2)).pause(0.3).click().perform()
    time.sleep(0.3)


def _card(drv) -> tuple[bool, str, str]:
    return drv.execute_script("var c = document.getElementById('ha-card');"
                              "return [c.hidden, c.getAttribute('data-head'), c.textContent];")


def test_report_opens_offline_without_errors_and_cells_open_cards(browser, tmp_path):
    path = tmp_path / "atlas.html"
    make_report_atlas().save_html(path)
    _open(browser, path)
    assert browser.execute_script("return document.querySelectorAll('.js-plotly-plot').length") == 7
    # a detector map cell opens that head's card, with its evidence from every detector
    _click_cell(browser, "det-ind-heatmap", 2, 2)
    hidden, head, text = _card(browser)
    assert not hidden and head == "L2H2", text
    assert "In-Context Identification" in text and "Latent Reasoning" in text and "vs random median 0.15" in text
    assert "skipped: needs 4096 positions" in text
    browser.find_element("id", "ha-card-close").click()
    # a stage-map cell too (the ICI panel is the second subplot)
    _click_cell(browser, "stage-map", 0, 1, axis="2")
    hidden, head, _ = _card(browser)
    assert not hidden and head == "L0H1"
    # typing a head name opens its card as well
    box = browser.find_element("id", "ha-lookup-input")
    box.clear()
    box.send_keys("L3H0\n")
    time.sleep(0.2)
    assert _card(browser)[1] == "L3H0"
    # token view: hovering a token shades what it attends to
    from selenium.webdriver.common.action_chains import ActionChains

    toks = browser.find_elements("css selector", "#det-ind-tokens .tv-tok")
    assert [t.text for t in toks] == ["<s>", " A", " B", " A", " B"]  # spaces kept
    ActionChains(browser).move_to_element(toks[2]).perform()
    shades = [t.value_of_css_property("background-color") for t in toks]
    assert shades[3] == shades[4] and shades[0] != shades[3]  # keys 0..2 shaded, later keys not
    assert "query token 2" in browser.find_element("css selector", "#det-ind-tokens .muted").text
    # no page-wide horizontal scroll
    assert browser.execute_script("return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    assert _console_errors(browser) == []
    bad = [u for u in _requests(browser) if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert bad == [], f"network requests: {bad}"


def test_crafted_atlas_runs_nothing(browser, tmp_path):
    path = tmp_path / "crafted.html"
    payload = "".join(PWN) + "".join(PAYLOADS)
    a = make_report_atlas(payload)
    a.save_html(path)
    _open(browser, path)
    # draw every string: open a card, hover cells and tokens
    browser.execute_script("window.headatlasShowCard(2, 2);")
    from selenium.webdriver.common.action_chains import ActionChains

    for t in browser.find_elements("css selector", ".tv-tok")[:5]:
        ActionChains(browser).move_to_element(t).perform()
    for div in browser.find_elements("css selector", ".js-plotly-plot"):
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", div)
        ActionChains(browser).move_to_element(div).pause(0.1).perform()
    time.sleep(0.5)
    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    assert browser.execute_script("return document.querySelectorAll('img, svg[onload], [onerror]').length") == 0
    assert payload in _card(browser)[2]  # the card shows the strings, as text
    assert _console_errors(browser) == []
    assert [u for u in _requests(browser) if not u.startswith(("file:", "data:", "blob:", "about:"))] == []


def test_wide_content_scrolls_inside_its_container(browser, tmp_path):
    import numpy as np

    a = make_report_atlas()
    r = a.result("ind")
    for i in range(40):
        r.extras[f"a_rather_long_extra_column_name_{i}"] = np.full(r.scores.shape, 0.123456)
    r.details["unbroken"] = "x" * 5000
    path = tmp_path / "wide.html"
    a.save_html(path)
    browser.set_window_size(900, 900)
    try:
        _open(browser, path)
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"), "page scrolls sideways"
        assert _console_errors(browser) == []
    finally:
        browser.set_window_size(1280, 1000)


def test_smollm2_report_in_the_browser(browser, smollm2, tmp_path):
    """The bundled model's report: previous-token and induction heads (quick scan)."""
    import headatlas

    atlas = headatlas.scan(smollm2, ["previous_token", "induction"], quick=True)
    path = tmp_path / "smollm2.html"
    atlas.save_html(path)
    _open(browser, path)
    assert _console_errors(browser) == []
    assert [u for u in _requests(browser) if not u.startswith(("file:", "data:", "blob:", "about:"))] == []
    assert "0.0 s" not in path.read_text()
    _click_cell(browser, "det-induction-heatmap", 1, 0)
    hidden, head, text = _card(browser)
    assert not hidden and head == "L1H0" and "induction" in text and "previous_token" in text
    if atlas.labelled("induction"):
        assert atlas.stage_heads()["LR"], "induction heads must appear under LR"
    assert browser.execute_script("return document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def test_the_harness_would_see_a_payload_run(browser, tmp_path):
    """Control: the same payload written raw into a page without a CSP does run (and is seen)."""
    path = tmp_path / "control.html"
    path.write_text(f"<!DOCTYPE html><html><body>{PWN[0]}<script>document.body.setAttribute('data-ready', '1')"
                    "</script></body></html>")
    _open(browser, path)
    time.sleep(0.3)
    assert browser.execute_script("return window.__pwned") == 1
