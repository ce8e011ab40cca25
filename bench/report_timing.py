"""Page weight and load timing of headatlas HTML reports in headless Chromium (selenium, file:// only).

Per page: its size, the browser's paint timing (first contentful paint, largest contentful paint), DOMContentLoaded,
the load event, when the report's script marked the page ready, the long tasks (> 50 ms) on the main thread and
"interactive": the end of the last long task before a 1.5 s quiet window (at least DOMContentLoaded and the ready
mark), as Lighthouse's time-to-interactive does without network. Measured with a ``PerformanceObserver`` installed
before the page's scripts (``Page.addScriptToEvaluateOnNewDocument``), at 1400 x 900.

Used by ``bench/bench_report.py`` (writes the report section of bench/RESULTS.md) and the browser tests.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

OBSERVE = r"""
window.__ha_perf = {long: [], lcp: null, ready: null};
try { new PerformanceObserver(function (l) { l.getEntries().forEach(function (e) {
  window.__ha_perf.long.push([e.startTime, e.duration]); }); }).observe({type: "longtask", buffered: true}); } catch (e) {}
try { new PerformanceObserver(function (l) { l.getEntries().forEach(function (e) {
  window.__ha_perf.lcp = e.startTime; }); }).observe({type: "largest-contentful-paint", buffered: true}); } catch (e) {}
new MutationObserver(function (ms, obs) {
  if (document.body && document.body.getAttribute("data-ready") === "1" && window.__ha_perf.ready === null) {
    window.__ha_perf.ready = performance.now(); obs.disconnect(); }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-ready"]});
"""
READ = r"""
var p = window.__ha_perf, nav = performance.getEntriesByType("navigation")[0];
var fcp = performance.getEntriesByName("first-contentful-paint")[0];
return {fcp: fcp ? fcp.startTime : null, lcp: p.lcp, dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
        ready: p.ready, long: p.long};
"""


def browser(width: int = 1400, height: int = 900) -> Any:
    """A headless Chromium driver (selenium), or raises RuntimeError naming what is missing."""
    chrome = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        raise RuntimeError(f"headless Chromium not found (chromium: {chrome}, chromedriver: {driver})")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                "--disable-extensions", "--disable-background-networking", "--no-first-run", "--no-default-browser-check",
                "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": OBSERVE})
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                                "mobile": False})
    return drv


def interactive(t: dict[str, Any], quiet: float = 1500.0) -> float:
    """End of the last long task that is not followed by a ``quiet`` ms window... before the first such window."""
    start = max(x for x in (t["dcl"], t["ready"] or 0.0) if x is not None)
    end = start
    for s, d in sorted(t["long"]):
        if s > end + quiet:
            break
        end = max(end, s + d)
    return end


def measure(drv: Any, path: Path, settle: float = 2.5) -> dict[str, Any]:
    """Open ``path`` (file://) and return its timing in ms: fcp, lcp, dcl, load, ready, interactive, blocking (total
    blocking time: the long tasks' time beyond 50 ms each) and bytes."""
    drv.get("about:blank")
    drv.get(Path(path).resolve().as_uri())
    for _ in range(200):
        if drv.execute_script("return document.body && document.body.getAttribute('data-ready')") == "1":
            break
        time.sleep(0.05)
    time.sleep(settle)   # let lazy drawing of what is on screen finish, and a quiet window pass
    t = drv.execute_script(READ)
    t["interactive"] = interactive(t)
    t["blocking"] = sum(max(0.0, d - 50.0) for _, d in t["long"])
    t["bytes"] = Path(path).stat().st_size
    t["n_long"] = len(t.pop("long"))
    return t


if __name__ == "__main__":
    import sys

    d = browser()
    try:
        for p in sys.argv[1:]:
            print(p, json.dumps({k: (round(v) if isinstance(v, float) else v) for k, v in measure(d, Path(p)).items()}))
    finally:
        d.quit()
