"""Screenshots of every dashboard page for README, from a workspace you choose.

    AIVH_HOME=/path/to/workspace python docs/screenshots.py [--run N] [--port 8765]

Starts `aivh serve` on 127.0.0.1 over that workspace, opens each page in Debian's Chromium
(Playwright) and writes docs/screenshots/<page>.png.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGES = {"runs": "", "train": "train", "evaluate": "evaluate", "review": "review", "shift": "shift",
         "export": "export", "duplicates": "duplicates", "map": "map", "sweep": "sweep"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=int, default=1)
    ap.add_argument("--sweep", type=int, default=1, help="the sweep the Sweep page opens")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    out = ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--port", str(args.port)],
                              cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{args.port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            for name, path in PAGES.items():
                page.goto(f"{base}/{path}?run={args.run}&watch={args.run}&sweep={args.sweep}&reviewer=reviewer")
                page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']",
                                       timeout=60_000)
                page.wait_for_timeout(2500)  # plotly draws after the script ends
                page.screenshot(path=str(out / f"{name}.png"))
                print(out / f"{name}.png")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
