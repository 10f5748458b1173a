"""Make docs/serve.png: the page of ``fastalex serve`` in headless Chromium, with the cat sample.

    python docs/serve_screenshot.py [--weights FILE | --random-weights] [--chromium /usr/bin/chromium]

Starts a server on a free port, opens the page, picks the cat sample, waits for the top-5,
the heat map, the feature maps and both timing runs (the NumPy reference takes a while),
and saves a full-page screenshot. Needs fastalex[serve,browser] and a Chromium binary.
"""

import argparse
import os
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="weights file (default: --random-weights)")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--output", default=os.path.join(HERE, "serve.png"))
    p.add_argument("--width", type=int, default=1100)
    args = p.parse_args()
    model = ["--weights", args.weights] if args.weights else ["--random-weights"]
    server = subprocess.Popen([sys.executable, "-m", "fastalex", "serve", "--port", "0", *model],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        for _ in range(1800):
            try:
                if urllib.request.urlopen(url + "healthz", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium,
                                         args=["--headless=new", "--no-sandbox", "--disable-gpu",
                                               "--disable-background-networking", "--hide-scrollbars"])
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.goto(url)
            page.wait_for_selector("#layer option", state="attached", timeout=600_000)
            page.click(".sample >> nth=0")
            page.wait_for_function("() => !document.getElementById('heat').hidden", timeout=600_000)
            page.wait_for_function("() => document.getElementById('activations').naturalWidth > 0",
                                   timeout=600_000)
            page.click("#time-numba")
            page.wait_for_selector("#timing-chart .row .numba", timeout=600_000)
            page.click("#time-numpy")
            page.wait_for_selector("#timing-chart .row .numpy", timeout=1_800_000)
            page.screenshot(path=args.output, full_page=True)
            browser.close()
        print(args.output)
    finally:
        server.terminate()
        server.wait(120)


if __name__ == "__main__":
    main()
