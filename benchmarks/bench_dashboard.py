"""Benchmark of the dashboard's cost in the browser: CPU of one live session page in headless Chromium.

Starts a broker, the WS bridge and control (OS-chosen ports), opens /dashboard/{code} in Debian's
Chromium through Playwright and measures, over a window of ``--seconds`` once packets flow:

- renderer CPU: utime + stime of the renderer process (/proc/<pid>/stat: the page's JavaScript,
  style, layout, paint and canvas work), as a percentage of one core: the headline figure;
- main thread busy: Chrome's own ``TaskDuration`` (Performance.getMetrics over the DevTools
  protocol), wall time the main thread spent in tasks; on a loaded machine it also counts the time
  the thread waited for a core, so it reads higher than the CPU it used;
- browser CPU: every Chromium process of this launch together (browser, renderer, GPU/compositor,
  network);
- packets/s received, frames/s drawn, sequence gaps and reconnects, read from the page.

Cases: ``paused`` (the page open, nothing streaming: its floor), ``1x`` (142 units at 40 Hz) and
``100x`` (4,000 packets/s). Each case runs ``--repeats`` times; figures are median [min-max].

    .venv/bin/python benchmarks/bench_dashboard.py                 # 3 x 10 s per case
    .venv/bin/python benchmarks/bench_dashboard.py --seconds 5 --repeats 1

Targets: at 1x the renderer uses <= 10 % of a core; at 100x the connection stays open (no
reconnect) and the page keeps drawing (>= 20 frames/s). A missed target prints FAIL and exits 1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from playwright.sync_api import sync_playwright  # noqa: E402

from browser import close, find_chromium, launch  # noqa: E402
from dashboard_stack import Stack  # noqa: E402
from processes import wait_for  # noqa: E402

TARGET_RENDERER_1X = 10.0   # % of one core
TARGET_FPS_100X = 20.0
CASES = (("paused", 1.0, True), ("1x", 1.0, False), ("100x", 100.0, False))
TICKS = os.sysconf("SC_CLK_TCK")


def post(stack: Stack, path: str, body: dict) -> dict:
    req = urllib.request.Request(stack.url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as reply:
        return json.load(reply)


def browser_pids(profile: str) -> tuple[list[int], list[int]]:
    """The Chromium processes of this launch (the one holding ``profile`` and its descendants),
    and those of them that are renderers (where the page's JavaScript, layout and paint run)."""
    parents: dict[int, int] = {}
    renderers: set[int] = set()
    root = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if b"--type=renderer" in cmdline:
            renderers.add(int(entry.name))
        if f"--user-data-dir={profile}".encode() in cmdline and b"--type=" not in cmdline:
            root = int(entry.name)          # the browser process itself (not its helpers)
    pids = {root} if root else set()
    grew = True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in pids} - pids
        pids |= new
        grew = bool(new)
    return sorted(pids), sorted(pids & renderers)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def page_figures(page) -> dict:
    return page.evaluate("""() => { const p = window.phantomlink, h = p.stream.health || {};
        return {now: performance.now(), packets: h.packets || 0, frames: p.view.frames, gaps: h.gaps || 0,
                reconnects: h.reconnects || 0, state: document.getElementById("connection").textContent}; }""")


def task_seconds(cdp) -> float:
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return metrics["TaskDuration"]


def measure(context, profile: str, stack: Stack, code: str, seconds: float) -> dict:
    page = context.new_page()
    try:
        page.goto(f"{stack.url}/dashboard/{code}")
        # (wait_for_function evaluates a string, which the page's CSP forbids; evaluate does not)
        wait_for(lambda: page.evaluate("Boolean(window.phantomlink)"), 15, "the page to start")
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")
        page.wait_for_timeout(1500)                       # connected, first frames drawn
        pids, renderers = browser_pids(profile)

        def sample():
            return (time.monotonic(), task_seconds(cdp), cpu_seconds(pids), cpu_seconds(renderers),
                    page_figures(page))
        t0, task0, cpu0, ren0, f0 = sample()
        page.wait_for_timeout(seconds * 1000)
        t1, task1, cpu1, ren1, f1 = sample()
        wall = t1 - t0
        page_wall = (f1["now"] - f0["now"]) / 1000    # the page's own clock for what it counted
        return {"main": 100 * (task1 - task0) / wall, "browser": 100 * (cpu1 - cpu0) / wall,
                "renderer": 100 * (ren1 - ren0) / wall,
                "packets": (f1["packets"] - f0["packets"]) / page_wall,
                "fps": (f1["frames"] - f0["frames"]) / page_wall,
                "gaps": f1["gaps"] - f0["gaps"], "reconnects": f1["reconnects"], "state": f1["state"]}
    finally:
        page.close()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} [{min(values):.1f}-{max(values):.1f}]"


def run(stack: Stack, seconds: float, repeats: int) -> dict[str, list[dict]]:
    chromium = find_chromium()
    if chromium is None:
        sys.exit("FAIL no Chromium found (apt-get install chromium)")
    results: dict[str, list[dict]] = {name: [] for name, _, _ in CASES}
    with sync_playwright() as playwright:
        context, profile = launch(playwright, chromium)
        try:
            for rep in range(repeats):
                for name, speed, paused in CASES:
                    code = f"bench-{name}-{rep}".replace(".", "")
                    post(stack, "/api/sessions/create", {"custom_code": code, "speed": speed, "paused": paused})
                    results[name].append(measure(context, profile, stack, code, seconds))
        finally:
            close(context, profile)
    return results


def report(results: dict[str, list[dict]]) -> bool:
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("case      renderer CPU %      main thread busy %  browser CPU %       packets/s           "
          "frames/s        gaps  reconnects")
    for name, runs in results.items():
        print(f"{name:8} {spread([r['renderer'] for r in runs]):>18} {spread([r['main'] for r in runs]):>19} "
              f"{spread([r['browser'] for r in runs]):>19} "
              f"{spread([r['packets'] for r in runs]):>19} {spread([r['fps'] for r in runs]):>18} "
              f"{sum(r['gaps'] for r in runs):6} {max(r['reconnects'] for r in runs):10}")
    ok = True
    renderer_1x = statistics.median(r["renderer"] for r in results["1x"])
    if renderer_1x > TARGET_RENDERER_1X:
        print(f"FAIL renderer CPU at 1x {renderer_1x:.1f} % > {TARGET_RENDERER_1X} % of a core")
        ok = False
    fast = results["100x"]
    if any(r["reconnects"] or r["state"] != "open" for r in fast):
        print("FAIL the connection did not stay open at 100x")
        ok = False
    if statistics.median(r["fps"] for r in fast) < TARGET_FPS_100X:
        print(f"FAIL fewer than {TARGET_FPS_100X} frames/s at 100x")
        ok = False
    if ok:
        print(f"PASS renderer CPU at 1x {renderer_1x:.1f} % <= {TARGET_RENDERER_1X} % of a core; "
              "100x stayed connected and drew")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp))
        try:
            results = run(stack, args.seconds, args.repeats)
        finally:
            stack.stop()
    return 0 if report(results) else 1


if __name__ == "__main__":
    sys.exit(main())
