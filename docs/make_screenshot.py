"""The README's screenshot of the gallery: ``photocap serve`` on an index, in the system's
headless Chromium (Selenium through chromedriver, nothing downloaded).

    photocap caption PHOTOS --db /tmp/gallery.db
    python docs/make_screenshot.py --db /tmp/gallery.db --query "dog" --out docs/gallery.jpg
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import threading
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--query", default="")
    parser.add_argument("--out", type=Path, default=Path("docs/gallery.jpg"))
    parser.add_argument("--size", default="1200,820")
    args = parser.parse_args()

    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from photocap.gallery import GalleryConfig, make_server

    config = GalleryConfig(db=args.db, port=0, thumbnails=Path(tempfile.mkdtemp()))
    server = make_server(config)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    size = f"--window-size={args.size}"
    for arg in ("--headless=new", "--no-sandbox", "--hide-scrollbars", size):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        query = f"?q={args.query}" if args.query else ""
        driver.get(f"http://127.0.0.1:{config.port}/{query}")
        driver.execute_script(
            "return Promise.all(Array.from(document.images).map(i => i.decode().catch(() => 0)))"
        )
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
        server.shutdown()
    Image.open(io.BytesIO(png)).convert("RGB").save(args.out, quality=85, optimize=True)
    print(args.out, args.out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
