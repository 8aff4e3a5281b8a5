"""The gallery: a local web page over the index (``photocap serve``).

Search (the CLI's search), a grid of thumbnails with their caption, a person's caption and the
alt text; a review page ordered by the model's confidence, lowest first, failures first with
their reasons; a photo's page, where a person corrects its caption. A correction is written as
a person's caption (:func:`photocap.metadata.correction.write_human_caption`: the sidecar, and
the file when photocap wrote its caption there), which no run overwrites; the index follows.

Built on Flask (routing, forms, Jinja2 templates escaping every text by default) and served by
Werkzeug's threaded server: a page for one person on their own machine needs no more.

Security, because a browser visits other sites too:

* it binds ``127.0.0.1`` by default; any other ``--host`` needs an access token the user sets
  (:class:`GalleryConfig.access_token`), asked for once and then kept in a same-site cookie;
* every request's ``Host`` must be the address served (a DNS-rebinding page's host is not);
* a photo is served by its index row id only, never by a path from the request;
* every text (captions, names: a sidecar can hold ``<script>``) is escaped by the templates,
  and a Content-Security-Policy allows no inline script at all;
* a correction must carry this server's per-session token (in the page's form, which another
  site cannot read) and come from this origin.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from photocap.errors import ImageError, PhotocapError, WriteError, one_line
from photocap.index import PhotoFacts, PhotoIndex
from photocap.metadata.authorship import find_human_caption
from photocap.metadata.correction import MAX_CAPTION, current_caption, write_human_caption
from photocap.metadata.sidecars import find_sidecars, sidecar_stamp
from photocap.metadata.xmp import NS_IPTC, XmpDocument
from photocap.thumbnails import PREVIEW_SIZE, THUMBNAIL_SIZE, ThumbnailCache

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask, Response

PAGE_SIZE = 48  # photos per page of the grid
MAX_PAGE = 10_000  # a deeper page number is read as this one
MAX_SEARCH_PAGE = 40  # search results go this deep (the ranking is cut there anyway)
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]"})
DEFAULT_PORT = 8750
_COOKIE = "photocap_access"


class GalleryError(PhotocapError):
    """The gallery cannot start as asked (a non-loopback host without a token, say)."""


def is_loopback(host: str) -> bool:
    """``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class GalleryConfig:
    """What ``photocap serve`` serves, and how."""

    db: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # Needed to serve on an address other than loopback: visitors give it once (?token=...).
    access_token: str | None = None
    thumbnails: Path | None = None  # the thumbnail cache's folder (default: the user cache)
    near: Callable[[str], list[str]] | None = None  # near words for search (lexicon)
    meaning: Any = None  # the query encoder (photocap.embedding.QueryEncoder), if any
    # The form token of this server's session: a page of another site cannot read it.
    session_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def cookie_value(self) -> str:
        """What the access cookie holds: a keyed hash of the access token (the token itself
        never travels back to a browser)."""
        key = (self.access_token or "").encode()
        return hmac.new(key, b"photocap-gallery-access", "sha256").hexdigest()

    def check(self) -> None:
        """Refuse what would expose the library: another host without an access token."""
        if not is_loopback(self.host) and not self.access_token:
            raise GalleryError(
                f"--host {self.host} makes the gallery reachable from other machines: set an "
                "access token with --token (or PHOTOCAP_SERVE_TOKEN); visitors open "
                "http://HOST:PORT/?token=TOKEN once"
            )


# ----------------------------------------------------------------------------- the app


def create_app(config: GalleryConfig) -> Flask:
    """The gallery as a Flask app (WSGI), for :func:`make_server` or a test client."""
    from flask import Flask, abort, redirect, render_template, request, url_for

    config.check()
    here = Path(__file__).parent
    app = Flask(
        "photocap.gallery",
        template_folder=str(here / "templates"),
        static_folder=str(here / "static"),
    )
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # a caption, not an upload
    if config.thumbnails is None:
        from photocap.paths import cache_dir

        config.thumbnails = cache_dir() / "thumbnails"
    thumbs = ThumbnailCache(config.thumbnails)
    corrections = threading.Lock()
    # Thumbnails decoded at once: a page asks for 48; the machine has only so many cores.
    decoding = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))

    def open_index() -> PhotoIndex:
        # One connection per request: Werkzeug serves each request on a thread of its own.
        return PhotoIndex(config.db, create=False)

    @app.before_request
    def guard() -> Any:
        if not _host_allowed(request.host, config):
            abort(400, "this address is not the gallery's (Host header refused)")
        if config.access_token:
            given = request.args.get("token")
            if given is not None:
                if not hmac.compare_digest(given.encode(), config.access_token.encode()):
                    abort(401, "an access token is needed: open the address with ?token=TOKEN")
                # Good: kept in a cookie (a keyed hash of it, never the token), and the token
                # taken out of the address (history, logs).
                args: dict[str, Any] = {k: v for k, v in request.args.items() if k != "token"}
                args |= request.view_args or {}
                response = redirect(url_for(request.endpoint or "home", **args))
                response.set_cookie(
                    _COOKIE, config.cookie_value(), httponly=True, samesite="Strict",
                    secure=request.is_secure,
                )  # fmt: skip
                return response
            cookie = request.cookies.get(_COOKIE) or ""
            if not hmac.compare_digest(cookie.encode(), config.cookie_value().encode()):
                abort(401, "an access token is needed: open the address with ?token=TOKEN")
        if request.method == "POST":
            site = request.headers.get("Sec-Fetch-Site", "same-origin")
            origin = request.headers.get("Origin")
            form_token = request.form.get("csrf", "")
            if (
                site not in ("same-origin", "none")
                or (origin is not None and origin != request.host_url.rstrip("/"))
                or not hmac.compare_digest(form_token.encode(), config.session_token.encode())
            ):
                abort(403, "cross-site request refused")
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        # same-origin, not no-referrer: with no-referrer a form post says "Origin: null".
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    @app.get("/")
    def home() -> Any:
        query = request.args.get("q", "").strip()[:500]
        page = _page_number(request.args.get("page"))
        if query:
            page = min(page, MAX_SEARCH_PAGE)
        suggestions: dict[str, str] = {}
        with open_index() as index:
            if query:
                # The CLI's search; a page is the next PAGE_SIZE of its ranking.
                hits = index.search(
                    query, limit=PAGE_SIZE * (page + 1) + 1, near=config.near,
                    meaning=config.meaning.encode if config.meaning else None,
                    meaning_model=config.meaning.model_id if config.meaning else None,
                )  # fmt: skip
                window = hits[PAGE_SIZE * page : PAGE_SIZE * (page + 1)]
                rows = index.rows_by_path([hit.path for hit in window])
                photos = [_card(rows[h.path], h.complete) for h in window if h.path in rows]
                more = len(hits) > PAGE_SIZE * (page + 1)
                if not hits:
                    suggestions = index.suggest(query)
                total = None
            else:
                total = index.count()
                page = min(page, max(0, math.ceil(total / PAGE_SIZE) - 1))
                found = index.list_photos(offset=PAGE_SIZE * page, limit=PAGE_SIZE + 1)
                photos = [_card(row) for row in found[:PAGE_SIZE]]
                more = len(found) > PAGE_SIZE
        return render_template(
            "gallery/grid.html", view="search", query=query, photos=photos, page=page,
            more=more, total=total, suggestions=suggestions,
            pages=None if total is None else math.ceil(total / PAGE_SIZE),
        )  # fmt: skip

    @app.get("/review")
    def review() -> Any:
        page = _page_number(request.args.get("page"))
        with open_index() as index:
            found = index.list_photos(offset=PAGE_SIZE * page, limit=PAGE_SIZE + 1, review=True)
        photos = [_card(row) for row in found[:PAGE_SIZE]]
        return render_template(
            "gallery/grid.html", view="review", query="", photos=photos, page=page,
            more=len(found) > PAGE_SIZE, total=None, suggestions={}, pages=None,
        )  # fmt: skip

    @app.get("/photo/<int:photo_id>")
    def photo(photo_id: int) -> Any:
        with open_index() as index:
            row = index.get_by_id(photo_id)
        if row is None:
            abort(404, "no such photo in the index")
        return photo_page(row, saved=request.args.get("saved") == "1")

    def photo_page(row: dict[str, Any], *, saved: bool = False, error: str | None = None) -> Any:
        card = _card(row)
        # The text a correction replaces: the sidecar's, in one language.
        card["editable"] = current_caption(Path(row["path"])) or card["caption"]
        return render_template(
            "gallery/photo.html", photo=card, csrf=config.session_token, saved=saved,
            error=error, max_caption=MAX_CAPTION, photo_key=photo_key(row["path"]),
        )  # fmt: skip

    @app.post("/photo/<int:photo_id>/caption")
    def correct(photo_id: int) -> Any:
        text = request.form.get("caption", "")
        with corrections, open_index() as index:  # one correction at a time
            row = index.get_by_id(photo_id)
            if row is None:
                abort(404, "no such photo in the index")
            if not hmac.compare_digest(request.form.get("photo", ""), photo_key(row["path"])):
                # The page was made for another photo under this id (the index changed).
                abort(409, "the index changed since this page was made: reload it")
            try:
                correct_caption(index, row, text)
            except WriteError as err:
                return photo_page(row, error=one_line(err)), 422
            except PhotocapError as err:  # the index: the files have the caption already
                why = f"saved in the photo's files, but the index was not updated ({one_line(err)})"
                return photo_page(
                    row, error=why + "; the next photocap caption run updates it"
                ), 503
        return redirect(url_for("photo", photo_id=photo_id, saved=1), code=303)

    @app.get("/thumb/<int:photo_id>")
    def thumb(photo_id: int) -> Any:
        return _image(photo_id, THUMBNAIL_SIZE)

    @app.get("/preview/<int:photo_id>")
    def preview(photo_id: int) -> Any:
        return _image(photo_id, PREVIEW_SIZE)

    def _image(photo_id: int, size: int) -> Any:
        from flask import Response

        with open_index() as index:
            row = index.get_by_id(photo_id)
        if row is None:
            abort(404, "no such photo in the index")
        try:
            with decoding:
                data = thumbs.get(Path(row["path"]), row.get("content_hash"), size)
        except (ImageError, OSError):
            abort(404, "this photo cannot be shown")
        response = Response(data, mimetype="image/jpeg")
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    @app.errorhandler(400)
    @app.errorhandler(401)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(409)
    @app.errorhandler(413)
    def error_page(err: Any) -> Any:
        return render_template("gallery/error.html", error=err), err.code

    return app


def correct_caption(index: PhotoIndex, row: dict[str, Any], text: str) -> None:
    """A person's caption for the photo of ``row``, written to its sidecar (and into the file
    when photocap wrote its caption there), then to the index. Raises :class:`WriteError`
    when it could not be saved; an in-file write that failed is raised too, after the sidecar
    has the caption."""
    path = Path(row["path"])
    outcomes = write_human_caption(path, text)
    human = find_human_caption(path) or " ".join(text.split())
    facts = PhotoFacts()
    if any(o.changed_photo for o in outcomes):  # rewritten: its new size, mtime and hash
        from photocap.run.write import file_facts

        facts = file_facts(path) or facts
    stamp = sidecar_stamp(path)
    index.update_photo(path, replace(facts, human_caption=human, sidecar_stamp=stamp))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise WriteError(f"saved in the sidecar, but not in the photo: {failed[0].message}")


def make_server(config: GalleryConfig) -> Any:
    """A threaded Werkzeug server for the gallery (``.serve_forever()``, ``.shutdown()``);
    ``config.port`` 0 picks a free port (``config.port`` then says which)."""
    from werkzeug.serving import make_server as werkzeug_server

    app = create_app(config)
    with PhotoIndex(config.db, create=False):  # no index: say so now, not on every page
        pass
    # Our own socket: Werkzeug prints two lines and exits 1 on a port in use.
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    try:
        sock = socket.create_server((config.host.strip("[]"), config.port), family=family)
    except OSError as err:
        raise GalleryError(
            f"cannot serve on {config.host}:{config.port}: {err.strerror or err} (another --port?)"
        ) from None
    sock.set_inheritable(True)
    server = werkzeug_server(config.host, config.port, app, threaded=True, fd=sock.fileno())
    sock.close()  # the server holds its own duplicate
    config.port = int(server.port)
    return server


def gallery_url(config: GalleryConfig) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}/"


# ----------------------------------------------------------------------------- helpers


def written_alt_text(photo: Path) -> str:
    """The alt text in the photo's sidecars (``Iptc4xmpCore:AltTextAccessibility``), as
    photo software and web exports read it; "" when none holds one (``--write index``)."""
    for sidecar in find_sidecars(photo):
        try:
            text = XmpDocument.load(sidecar).get_default(NS_IPTC, "AltTextAccessibility")
        except (WriteError, OSError):
            continue
        if text:
            return text
    return ""


def _host_allowed(host_header: str, config: GalleryConfig) -> bool:
    """The Host header names the address served: loopback names for a loopback server (a page
    from another site whose name resolves to 127.0.0.1 sends its own name), the host given."""
    if config.host in WILDCARD_HOSTS:
        # Reachable by any of the machine's names: the access token (required for these
        # hosts) guards it; a DNS-rebinding page does not have this site's cookie.
        return True
    names = {config.host.lower()}
    if is_loopback(config.host):
        names |= {"127.0.0.1", "localhost", "[::1]", "::1"}
    host_header = host_header.lower()
    return host_header in {f"{name}:{config.port}" for name in names} | (
        names if config.port == 80 else set()
    )


def photo_key(path: str) -> str:
    """A short digest of a photo's path: a correction's form names the photo it was made for."""
    return hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _page_number(text: str | None) -> int:
    try:
        return max(0, min(int(text or 0), MAX_PAGE))
    except ValueError:
        return 0


def _card(row: dict[str, Any], complete: bool = True) -> dict[str, Any]:
    """What a page shows of one photo (the template escapes every text)."""
    caption = row.get("caption") or ""
    human = row.get("human_caption") or ""
    path = Path(row["path"])
    try:
        alternatives = json.loads(row.get("alternatives") or "[]")
    except ValueError:
        alternatives = []
    return {
        "id": row["id"], "name": path.name, "folder": str(path.parent), "caption": caption,
        "human_caption": human, "alt": human or caption or f"Photo {path.name}",
        "alt_text": written_alt_text(path),
        "score": row.get("score"), "error": row.get("error") or "",
        "alternatives": [a for a in alternatives if isinstance(a, str)],
        "date_taken": row.get("date_taken") or "", "camera": row.get("camera") or "",
        "complete": complete,
        # A photo that failed before it had a caption (not an image, empty) has nothing to show.
        "viewable": not (row.get("error") and not caption),
        # Mean log-probability per word -> the model's mean probability of each word.
        "confidence": None if row.get("score") is None else round(100 * math.exp(row["score"])),
    }  # fmt: skip
