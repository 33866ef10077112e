"""Draw docs/screenshots/serve.png: the page on a model, after a generation, in Chromium.

    python docs/screenshots/serve_screenshot.py MODEL [--prompt TEXT]
"""

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

from gptlab.serve.app import Background, load_lab

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--prompt", default="ROMEO:\n")
parser.add_argument("--out", default=str(Path(__file__).with_name("serve.png")))
args = parser.parse_args()
with Background([load_lab(args.model, device="cpu")]) as url, sync_playwright() as p:
    browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1240, "height": 900})
    page.goto(url + "?max_new_tokens=80&layer=2&head=1")
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    page.fill("#prompt", args.prompt)
    page.click("#go")
    page.wait_for_function("!document.getElementById('go').disabled", timeout=120_000)
    page.wait_for_timeout(3000)  # the grid is drawn a layer at a time
    page.screenshot(path=args.out, full_page=True)
    browser.close()
print(args.out)
