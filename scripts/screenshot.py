"""Screenshot a local HTML page in headless Chromium (for the README's picture of `undiffuse explain`).

    .venv/bin/python scripts/screenshot.py out/explain/index.html docs/explain.png [--height 2400]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=2400, help="the top this many pixels of the page")
    args = ap.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("error: needs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": args.width, "height": args.height})
        tab.goto(args.page.resolve().as_uri())
        tab.wait_for_load_state("load")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
