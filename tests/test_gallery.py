"""``photocap serve``: the gallery's pages, corrections and guards, through Flask's test client
on real indexes, sidecars and photos (the browser tests are in test_gallery_browser.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny_jpegs
from PIL import Image

from photocap.gallery import PAGE_SIZE, GalleryConfig, GalleryError, create_app
from photocap.index import PhotoIndex
from photocap.metadata.provenance import read_provenance
from photocap.metadata.xmp import NS_DC, NS_IPTC, XmpDocument
from photocap.pipeline import CaptionOptions, PhotoResult, caption_library

BASE = "http://127.0.0.1:8750"


def _client(db: Path, tmp_path: Path, **config: Any) -> Any:
    app = create_app(GalleryConfig(db=db, thumbnails=tmp_path / "thumbs", **config))
    return app.test_client()


def _rows(db: Path, rows: list[dict[str, Any]]) -> None:
    with PhotoIndex(db) as index:
        index.upsert_photos([{"model_id": "m", **row} for row in rows])


def _ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'href="/photo/(\d+)"', html)]


def _caption_run(lib: Path, captioner: Any, db: Path, writers: list[str]) -> dict[Path, str]:
    options = CaptionOptions(writers=writers, batch_size=4, workers=1)
    with PhotoIndex(db) as index:
        events = list(caption_library([lib], captioner, index, options))
    return {e.path: e.status for e in events if isinstance(e, PhotoResult)}


def _one_captioned(tmp_path: Path, captioner: Any) -> tuple[Path, Any, int]:
    """A library of one photo captioned by a real run (sidecar and index), a gallery client
    over its index, and the photo's id there."""
    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 1)
    db = tmp_path / "i.db"
    _caption_run(lib, captioner, db, ["xmp", "index"])
    client = _client(db, tmp_path)
    (photo_id,) = _ids(client.get("/", base_url=BASE).get_data(as_text=True))
    return lib, client, photo_id


def _form(client: Any, photo_id: int, caption: str) -> dict[str, str]:
    """The photo page's form, filled in: its per-session token, the photo it was made for."""
    page = client.get(f"/photo/{photo_id}", base_url=BASE).get_data(as_text=True)
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]+)"', page))
    assert set(fields) == {"csrf", "photo"}
    return {**fields, "caption": caption}


def _correct(client: Any, photo_id: int, caption: str) -> Any:
    form = _form(client, photo_id, caption)
    return client.post(f"/photo/{photo_id}/caption", base_url=BASE, data=form)


# ----------------------------------------------------------------------------- pages


def test_search_shows_matching_photos_with_caption_alt_text_and_a_persons_caption(
    tmp_path: Path,
) -> None:
    lib = tmp_path / "lib"
    a, b = make_tiny_jpegs(lib, 2)
    db = tmp_path / "i.db"
    _rows(db, [
        {"path": str(a), "caption": "A dog runs on the beach.", "human_caption": "Rex, 2019"},
        {"path": str(b), "caption": "A red car parked on a street."},
    ])  # fmt: skip
    client = _client(db, tmp_path)
    html = client.get("/?q=dog", base_url=BASE).get_data(as_text=True)
    assert "A dog runs on the beach." in html and "Rex, 2019" in html and "red car" not in html
    # Every thumbnail's alt is its caption (a person's first: it is the better one).
    assert re.findall(r'<img src="/thumb/\d+" alt="([^"]*)"', html) == ["Rex, 2019"]
    assert 'label for="q"' in html  # every control labelled
    # Without a query: every photo, newest first.
    assert len(_ids(client.get("/", base_url=BASE).get_data(as_text=True))) == 2


def test_no_match_suggests_a_word_of_the_index(tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    _rows(db, [{"path": "/p/dog.jpg", "caption": "A dog runs."}])
    html = _client(db, tmp_path).get("/?q=dgo", base_url=BASE).get_data(as_text=True)
    assert "No photo matches dgo" in html and ">dog</a>" in html


def test_pages_never_hold_more_than_a_page_of_photos(tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    _rows(db, [{"path": f"/p/{i:04d}.jpg", "caption": f"A dog number {i}."} for i in range(130)])
    client = _client(db, tmp_path)
    seen: list[int] = []
    for page in range(3):
        html = client.get(f"/?page={page}", base_url=BASE).get_data(as_text=True)
        ids = _ids(html)
        assert len(ids) == min(PAGE_SIZE, 130 - PAGE_SIZE * page)
        assert ('rel="next"' in html) == (page < 2)
        seen += ids
    assert len(set(seen)) == 130  # every photo once across the pages
    found = _ids(client.get("/?q=dog&page=2", base_url=BASE).get_data(as_text=True))
    assert len(found) == 130 - 2 * PAGE_SIZE


def test_review_shows_failures_first_then_the_least_confident(tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    _rows(db, [
        {"path": "/p/sure.jpg", "caption": "A dog.", "score": -0.2},
        {"path": "/p/unsure.jpg", "caption": "A man on a wall.", "score": -2.5},
        {"path": "/p/middle.jpg", "caption": "A cat.", "score": -1.0},
    ])  # fmt: skip
    with PhotoIndex(db) as index:
        index.upsert_photos([{"path": "/p/broken.jpg", "error": "not an image (truncated)"}])
    html = _client(db, tmp_path).get("/review", base_url=BASE).get_data(as_text=True)
    names = re.findall(r'<p class="name">([^<]+?)[ <]', html)
    assert names == ["broken.jpg", "unsure.jpg", "middle.jpg", "sure.jpg"]
    assert "not an image (truncated)" in html


def test_every_text_is_escaped(tmp_path: Path) -> None:
    # A sidecar (or a file name) can hold markup: shown as text, never run.
    lib = tmp_path / "lib"
    (photo,) = make_tiny_jpegs(lib, 1)
    evil = photo.rename(lib / "<img src=x onerror=alert(1)>.jpg")
    db = tmp_path / "i.db"
    _rows(db, [{"path": str(evil), "caption": "<script>alert('x')</script> dog",
                "human_caption": '"><b>bold</b>'}])  # fmt: skip
    client = _client(db, tmp_path)
    (photo_id,) = _ids(client.get("/", base_url=BASE).get_data(as_text=True))
    for url in ("/?q=dog", "/review", f"/photo/{photo_id}"):
        response = client.get(url, base_url=BASE)
        html = response.get_data(as_text=True)
        assert "<script>alert" not in html and "<b>bold</b>" not in html
        assert "<img src=x" not in html
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]


# ----------------------------------------------------------------------------- images


def test_thumbnails_are_upright_small_cached_and_served_by_id_only(tmp_path: Path) -> None:
    import io

    lib = tmp_path / "lib"
    lib.mkdir()
    photo = lib / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 400x200, shown 200x400
    Image.new("RGB", (400, 200), (200, 30, 30)).save(photo, exif=exif.tobytes())
    db = tmp_path / "i.db"
    _rows(db, [{"path": str(photo), "caption": "A red wall.", "content_hash": "abc123"}])
    client = _client(db, tmp_path)
    (photo_id,) = _ids(client.get("/", base_url=BASE).get_data(as_text=True))
    response = client.get(f"/thumb/{photo_id}", base_url=BASE)
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.data))
    assert thumb.size == (160, 320)  # upright, longest side 320
    assert [p.name for p in (tmp_path / "thumbs").iterdir()] == ["abc123-320-v1.jpg"]
    # Ids only: anything else is not a route; an id not in the index is not found.
    for url in ("/thumb/999", "/thumb/..%2F..%2Fetc%2Fpasswd", "/thumb//etc/passwd",
                f"/thumb/{photo_id}/../../../etc/passwd", "/static/../gallery.py"):  # fmt: skip
        assert client.get(url, base_url=BASE).status_code == 404, url


def test_the_thumbnail_cache_stays_under_its_bound(tmp_path: Path) -> None:
    from photocap.thumbnails import ThumbnailCache

    lib = tmp_path / "lib"
    photos = make_tiny_jpegs(lib, 12, size=(300, 200))
    cache = ThumbnailCache(tmp_path / "thumbs", max_bytes=4000)
    for k, photo in enumerate(photos):
        cache.get(photo, f"hash{k}")
    total = sum(p.stat().st_size for p in (tmp_path / "thumbs").iterdir())
    assert 0 < total <= 4000
    assert (tmp_path / "thumbs" / "hash11-320-v1.jpg").exists()  # the newest stays


# ----------------------------------------------------------------------------- corrections


def test_a_correction_is_a_persons_caption_in_the_sidecar_and_the_index_kept_by_later_runs(
    tmp_path: Path, captioner: Any
) -> None:
    lib = tmp_path / "lib"
    (photo,) = make_tiny_jpegs(lib, 1)
    db = tmp_path / "i.db"
    _caption_run(lib, captioner, db, ["xmp", "index"])
    sidecar = lib / "img_0000.jpg.xmp"
    text = sidecar.read_text(encoding="utf-8")  # a German caption a person wrote too
    at = text.index("</rdf:Alt>", text.index("<dc:description"))
    sidecar.write_text(text[:at] + '<rdf:li xml:lang="de-DE">Ein Bild</rdf:li>' + text[at:])
    client = _client(db, tmp_path)
    (photo_id,) = _ids(client.get("/", base_url=BASE).get_data(as_text=True))
    response = _correct(client, photo_id, "  Grandma's   dog Rex in the garden ")
    assert response.status_code == 303
    page = client.get(response.headers["Location"], base_url=BASE).get_data(as_text=True)
    assert "Saved as a person" in page
    assert '<dd class="alt">Grandma&#39;s dog Rex in the garden</dd>' in page  # the sidecar's
    doc = XmpDocument.load(sidecar)
    assert doc.get_default(NS_DC, "description") == "Grandma's dog Rex in the garden"
    assert doc.get_default(NS_IPTC, "AltTextAccessibility") == "Grandma's dog Rex in the garden"
    assert doc.texts_by_language(NS_DC, "description")[-1] == "Ein Bild"  # other languages kept
    prov = read_provenance(doc)
    assert prov.description is None and prov.alt_text is None  # not photocap's any more
    with PhotoIndex(db) as index:
        hits = index.search("rex garden")
        assert [h.path for h in hits] == [str(photo)]
        assert (index.get_dict(photo) or {})["human_caption"].startswith("Grandma's dog Rex")
    # A later run, even --force, never overwrites it.
    with PhotoIndex(db) as index:
        options = CaptionOptions(writers=["xmp", "index"], batch_size=4, workers=1, force=True)
        events = list(caption_library([lib], captioner, index, options))
    statuses = [o.status for e in events if isinstance(e, PhotoResult) for o in e.outputs]
    assert "kept_human" in statuses
    assert XmpDocument.load(sidecar).get_default(NS_DC, "description") == (
        "Grandma's dog Rex in the garden"
    )


def test_a_correction_goes_into_the_file_photocap_wrote_losslessly_and_revert_keeps_it(
    tmp_path: Path, captioner: Any
) -> None:
    from photocap.metadata.infile import read_exif_caption
    from photocap.metadata.revert import revert_paths

    lib = tmp_path / "lib"
    (photo,) = make_tiny_jpegs(lib, 1, size=(64, 48))
    pixels = Image.open(photo).tobytes()
    db = tmp_path / "i.db"
    _caption_run(lib, captioner, db, ["xmp", "exif", "index"])
    assert read_exif_caption(photo)[0]  # photocap's caption is in the file
    client = _client(db, tmp_path)
    (photo_id,) = _ids(client.get("/", base_url=BASE).get_data(as_text=True))
    response = _correct(client, photo_id, "Oma's tulips")
    assert response.status_code == 303
    assert read_exif_caption(photo) == ("Oma's tulips", "Oma's tulips")
    assert Image.open(photo).tobytes() == pixels
    with PhotoIndex(db) as index:
        row = index.get_dict(photo) or {}
    assert row["size"] == photo.stat().st_size  # the index follows the rewritten file
    # A re-run keeps it in the file and the sidecar; revert leaves a person's caption alone.
    assert set(_caption_run(lib, captioner, db, ["xmp", "exif", "index"]).values()) <= {
        "skipped",
        "carried",
        "kept",
        "captioned",
    }
    assert read_exif_caption(photo)[0] == "Oma's tulips"
    list(revert_paths([lib]))
    assert read_exif_caption(photo)[0] == "Oma's tulips"
    assert XmpDocument.load(lib / "img_0000.jpg.xmp").get_default(NS_DC, "description") == (
        "Oma's tulips"
    )


def test_corrections_photocap_would_not_keep_are_refused_and_nothing_changes(
    tmp_path: Path, captioner: Any
) -> None:
    lib, client, photo_id = _one_captioned(tmp_path, captioner)
    before = (lib / "img_0000.jpg.xmp").read_bytes()
    camera_text = "is what cameras write when nobody wrote a caption"
    for text, why in (("   ", "a caption cannot be empty"), ("Untitled", camera_text)):
        response = _correct(client, photo_id, text)
        assert response.status_code == 422 and why in response.get_data(as_text=True)
    assert (lib / "img_0000.jpg.xmp").read_bytes() == before


def test_a_photo_gone_since_it_was_indexed_gets_no_sidecar(tmp_path: Path, captioner: Any) -> None:
    lib = tmp_path / "lib"
    (photo,) = make_tiny_jpegs(lib, 1)
    db = tmp_path / "i.db"
    _caption_run(lib, captioner, db, ["index"])
    client = _client(db, tmp_path)
    (photo_id,) = _ids(client.get("/", base_url=BASE).get_data(as_text=True))
    form = _form(client, photo_id, "Rex")
    photo.unlink()
    response = client.post(f"/photo/{photo_id}/caption", base_url=BASE, data=form)
    assert response.status_code == 422 and "no longer at" in response.get_data(as_text=True)
    assert list(lib.iterdir()) == []


def test_a_persons_comment_in_the_file_is_kept_by_a_correction(
    tmp_path: Path, captioner: Any
) -> None:
    import piexif
    from metadata_helpers import camera_exif

    from photocap.metadata.infile import read_exif_caption

    lib = tmp_path / "lib"
    (photo,) = make_tiny_jpegs(lib, 1, size=(64, 48))
    exif = piexif.load(camera_exif())
    exif["0th"][piexif.ImageIFD.XPComment] = "Opa's birthday".encode("utf-16le") + b"\0\0"
    piexif.insert(piexif.dump(exif), str(photo))
    db = tmp_path / "i.db"
    _caption_run(lib, captioner, db, ["xmp", "exif", "index"])
    assert read_exif_caption(photo)[1] == "Opa's birthday"  # the run kept it
    client = _client(db, tmp_path)
    (photo_id,) = _ids(client.get("/", base_url=BASE).get_data(as_text=True))
    assert _correct(client, photo_id, "Opa blowing out the candles").status_code == 303
    assert read_exif_caption(photo) == ("Opa blowing out the candles", "Opa's birthday")


def test_a_sidecar_that_cannot_be_saved_leaves_photo_and_sidecar_as_they_were(
    tmp_path: Path, captioner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photocap.errors import WriteError
    from photocap.metadata import correction

    lib = tmp_path / "lib"
    (photo,) = make_tiny_jpegs(lib, 1, size=(64, 48))
    db = tmp_path / "i.db"
    _caption_run(lib, captioner, db, ["xmp", "exif", "index"])
    before = photo.read_bytes(), (lib / "img_0000.jpg.xmp").read_bytes()

    def full_disk(path: Path, doc: Any) -> None:
        raise WriteError("no space left on device")

    monkeypatch.setattr(correction, "save_sidecar", full_disk)  # after the photo's rewrite
    client = _client(db, tmp_path)
    (photo_id,) = _ids(client.get("/", base_url=BASE).get_data(as_text=True))
    response = _correct(client, photo_id, "Oma's tulips")
    assert response.status_code == 422 and "no space left" in response.get_data(as_text=True)
    assert (photo.read_bytes(), (lib / "img_0000.jpg.xmp").read_bytes()) == before


# ----------------------------------------------------------------------------- guards


def test_a_correction_needs_this_sessions_token_and_this_origin(
    tmp_path: Path, captioner: Any
) -> None:
    lib, client, photo_id = _one_captioned(tmp_path, captioner)
    before = (lib / "img_0000.jpg.xmp").read_bytes()
    form = _form(client, photo_id, "pwned")
    url = f"/photo/{photo_id}/caption"
    attempts = [
        ({"caption": "pwned", "photo": form["photo"]}, {}),  # no token: another site's form
        ({**form, "csrf": "guess"}, {}),
        (form, {"Sec-Fetch-Site": "cross-site"}),
        (form, {"Origin": "http://evil.example"}),
    ]
    for data, headers in attempts:
        response = client.post(url, base_url=BASE, data=data, headers=headers)
        assert response.status_code == 403, (data, headers)
    assert (lib / "img_0000.jpg.xmp").read_bytes() == before


def test_a_request_for_another_host_is_refused(tmp_path: Path) -> None:
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    db = tmp_path / "i.db"
    _rows(db, [{"path": "/p/dog.jpg", "caption": "A dog."}])
    client = _client(db, tmp_path)
    assert client.get("/", base_url="http://evil.example:8750").status_code == 400
    assert client.get("/", base_url="http://localhost:8750").status_code == 200
    assert client.get("/", base_url="http://127.0.0.1:9999").status_code == 400


def test_another_host_than_loopback_needs_an_access_token(tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    _rows(db, [{"path": "/p/dog.jpg", "caption": "A dog."}])
    with pytest.raises(GalleryError, match="--token"):
        _client(db, tmp_path, host="0.0.0.0")
    for host in ("192.0.2.7", "0.0.0.0"):  # an address of this machine, or all of them
        client = _client(db, tmp_path, host=host, access_token="s3cret-token")
        base = "http://192.0.2.7:8750"
        assert client.get("/", base_url=base).status_code == 401
        wrong = client.get("/?token=wrong", base_url=base)
        assert wrong.status_code == 401 and "Set-Cookie" not in wrong.headers
        good = client.get("/review?token=s3cret-token&page=0", base_url=base)
        # Kept in a cookie that does not hold the token; the token leaves the address.
        assert good.status_code == 302 and good.headers["Location"] == "/review?page=0"
        cookie = good.headers["Set-Cookie"]
        assert "s3cret-token" not in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert client.get("/review", base_url=base).status_code == 200
        client.delete_cookie("photocap_access", domain="192.0.2.7")
        client.set_cookie("photocap_access", "s3cret-token", domain="192.0.2.7")
        assert client.get("/review", base_url=base).status_code == 401  # the token is no cookie


def test_a_stale_page_cannot_correct_another_photo(tmp_path: Path, captioner: Any) -> None:
    _, client, photo_id = _one_captioned(tmp_path, captioner)
    form = _form(client, photo_id, "A new caption")
    form["photo"] = "0123456789abcdef"  # made for another photo that had this id
    assert client.post(f"/photo/{photo_id}/caption", base_url=BASE, data=form).status_code == 409


# ----------------------------------------------------------------------------- the command


def test_photocap_serve_serves_until_sigterm_and_leaves_no_process(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import urllib.request

    db = tmp_path / "i.db"
    _rows(db, [{"path": "/p/dog.jpg", "caption": "A dog."}])
    args = [sys.executable, "-m", "photocap", "serve", "--db", str(db), "--port", "0"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "photocap gallery: http://127.0.0.1:PORT/  (Ctrl-C ...)"
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        with urllib.request.urlopen(url.group(0) + "?q=dog", timeout=30) as page:
            assert page.status == 200 and "A dog." in page.read().decode()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr.read().strip() == "Stopped."  # no line per request
    finally:
        proc.kill()


def test_photocap_serve_refuses_another_host_without_a_token_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from photocap.cli import app

    db = tmp_path / "i.db"
    _rows(db, [{"path": "/p/dog.jpg", "caption": "A dog."}])
    result = CliRunner().invoke(app, ["serve", "--db", str(db), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--token" in lines[0]
    result = CliRunner().invoke(app, ["serve", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "no index at" in result.output


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import socket

    from typer.testing import CliRunner

    from photocap.cli import app

    db = tmp_path / "i.db"
    _rows(db, [{"path": "/p/dog.jpg", "caption": "A dog."}])
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--db", str(db), "--port", str(port)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"cannot serve on 127.0.0.1:{port}" in lines[0]


def test_a_photo_that_cannot_be_shown_says_so_instead_of_a_broken_image(tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    with PhotoIndex(db) as index:
        index.upsert_photos([{"path": "/p/empty.jpg", "error": "empty file"}])
    client = _client(db, tmp_path)
    html = client.get("/review", base_url=BASE).get_data(as_text=True)
    assert "<img" not in html and "empty.jpg: cannot be shown" in html
