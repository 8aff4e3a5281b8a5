"""``photocap serve`` in a real browser: the system's headless Chromium driven by Selenium
through the system's chromedriver (nothing is downloaded: Selenium Manager is kept offline).
Skipped where they are not installed (``apt-get install chromium chromium-driver``)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny_jpegs

pytestmark = pytest.mark.browser
pytest.importorskip("selenium", reason="the browser tests need selenium (the dev extra)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "no browser: the gallery's browser tests need Chromium and its driver "
        "(apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from photocap.gallery import GalleryConfig, make_server  # noqa: E402
from photocap.index import PhotoIndex  # noqa: E402
from photocap.metadata.xmp import NS_DC, XmpDocument  # noqa: E402
from photocap.pipeline import CaptionOptions, caption_library  # noqa: E402

XSS = "<script>alert('pwned')</script><img src=x onerror=alert(2)> a dog"


@pytest.fixture
def library(tmp_path: Path, captioner: Any) -> tuple[Path, Path]:
    """Three photos captioned by a real run (sidecars), one given a caption holding markup."""
    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 3, size=(120, 80))
    db = tmp_path / "i.db"
    options = CaptionOptions(writers=["xmp", "index"], batch_size=4, workers=1)
    with PhotoIndex(db) as index:
        list(caption_library([lib], captioner, index, options))
        index.upsert_photos([{"path": str(lib / "img_0000.jpg"), "caption": "A zebra grazes."},
                             {"path": str(lib / "img_0001.jpg"), "caption": XSS}])  # fmt: skip
    return lib, db


@pytest.fixture
def gallery(library: tuple[Path, Path], tmp_path: Path) -> Iterator[str]:
    _, db = library
    config = GalleryConfig(db=db, port=0, thumbnails=tmp_path / "thumbs")
    server = make_server(config)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{config.port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(browser: Any, until: Any) -> None:
    """Until the page the last action led to is there (a click returns before it loads)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(until)


def test_search_open_correct_reload_and_the_sidecar_holds_it(
    gallery: str, browser: Any, library: tuple[Path, Path]
) -> None:
    lib, _ = library
    browser.get(gallery + "/")
    box = browser.find_element(By.ID, "q")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=q]").text == "Search captions"
    box.send_keys("zebra", Keys.ENTER)  # the keyboard alone
    _wait(browser, lambda d: "q=zebra" in d.current_url and d.find_elements(By.ID, "grid"))
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert len(cards) == 1 and "A zebra grazes." in cards[0].text
    image = cards[0].find_element(By.TAG_NAME, "img")
    assert image.get_attribute("alt") == "A zebra grazes."
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 120  # loaded
    cards[0].find_element(By.CSS_SELECTOR, "a.thumb").send_keys(Keys.ENTER)  # open it
    _wait(browser, lambda d: d.find_elements(By.ID, "caption"))
    box = browser.find_element(By.ID, "caption")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=caption]").text
    box.clear()
    box.send_keys("Rex chasing a ball at Grandma's")
    browser.find_element(By.CSS_SELECTOR, "form.correct button").click()
    _wait(
        browser,
        lambda d: (
            "saved=1" in d.current_url or d.find_elements(By.CSS_SELECTOR, "h1 + p[role=alert]")
        ),
    )
    assert "Saved as a person" in browser.find_element(By.CSS_SELECTOR, ".saved").text
    browser.refresh()
    human = browser.find_element(By.CSS_SELECTOR, "dd.human").text
    assert human == "Rex chasing a ball at Grandma's"
    sidecar = XmpDocument.load(lib / "img_0000.jpg.xmp")
    assert sidecar.get_default(NS_DC, "description") == "Rex chasing a ball at Grandma's"
    # And search finds it by the person's words.
    browser.get(gallery + "/?q=grandma")
    assert "Rex chasing a ball" in browser.find_element(By.CSS_SELECTOR, ".card").text


def test_a_caption_holding_markup_is_shown_as_text_and_never_runs(
    gallery: str, browser: Any
) -> None:
    browser.get(gallery + "/?q=dog")
    texts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".caption")]
    assert any("<script>alert('pwned')</script>" in t for t in texts)
    assert not browser.find_elements(By.CSS_SELECTOR, "main script, .card img[src=x]")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018


def test_a_path_outside_the_index_is_refused(gallery: str, browser: Any) -> None:
    for url in ("/thumb/999", "/preview/..%2F..%2F..%2Fetc%2Fpasswd", "/thumb/%2Fetc%2Fpasswd"):
        browser.get(gallery + url)
        assert "root:" not in browser.page_source
        assert "404" in browser.title or "Not Found" in browser.page_source, url


def test_arrow_keys_move_between_thumbnails(gallery: str, browser: Any) -> None:
    browser.get(gallery + "/")
    links = browser.find_elements(By.CSS_SELECTOR, "a.thumb")
    assert len(links) == 3
    links[0].send_keys("")  # focus the first
    browser.execute_script("arguments[0].focus()", links[0])
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert browser.switch_to.active_element == links[1]
