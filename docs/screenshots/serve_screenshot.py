"""Draw docs/screenshots/serve*.png: the page on a model, after a generation, in Chromium:
serve.png (the top of the page), one picture per view (serve-model.png, serve-learn.png, ...)
and serve-steps.zh-CN.png (a view in Chinese).

    python docs/screenshots/serve_screenshot.py MODEL [--prompt TEXT]

MODEL is best a run trained with snapshots=true (the main job is): "Watch it learn" shows then.
"""

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

from gptlab.serve.app import Background, load_lab

HERE = Path(__file__).parent
VIEWS = ("learn", "model", "embeddings", "attention", "steps", "residual", "lens", "next", "heads")

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--prompt", default="ROMEO:\n")
args = parser.parse_args()
with Background([load_lab(args.model, device="cpu")]) as url, sync_playwright() as p:
    browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1240, "height": 900})
    page.goto(url + "?max_new_tokens=80&layer=2&head=1")
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    page.fill("#prompt", args.prompt)
    page.click("#go")
    page.wait_for_function("!document.getElementById('go').disabled", timeout=120_000)
    page.click("#pane-0 .chip >> nth=-12")  # a token inside the text: every view looks there
    page.wait_for_timeout(3000)  # the grid is drawn a layer at a time
    page.screenshot(path=HERE / "serve.png")
    for view in VIEWS:
        page.locator(f"#{view}-view").screenshot(path=HERE / f"serve-{view}.png")
    page.click("#lang")
    page.wait_for_timeout(1500)
    page.locator("#steps-view").screenshot(path=HERE / "serve-steps.zh-CN.png")
    browser.close()
print(HERE)
