"""The caption index: one SQLite file (via sqlite-utils) with one row per photo, searchable.

Table ``photos`` (primary key ``path``, absolute) holds the caption shown to users plus what an
incremental run needs (size, mtime_ns, content hash, model id) and what a user searches by
(date taken, camera). Full-text search is configured the sqlite-utils way
(``enable_fts(["caption", "human_caption"], tokenize="porter unicode61",
create_triggers=True)``), so ``datasette photocap.db`` offers search with no setup.

The schema evolves through named migrations recorded in ``_migrations`` (each runs once). The
database runs in WAL mode with a busy timeout and every batch is written in one
``BEGIN IMMEDIATE`` transaction, so two runs on one index wait for each other instead of
failing, and an interrupted run leaves a consistent index.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import sqlite_utils

from photocap.errors import IndexDbError, QueryError
from photocap.writers import KEEP_VECTOR, CaptionRecord, OutcomeCode, WriteOptions, WriteOutcome

BUSY_TIMEOUT_MS = 60_000
# search: a query matching more captions than this ranks only the newest this many (latency).
RANK_WINDOW = 5_000
# "did you mean": the words of the newest this many captions are the words it may offer.
SUGGESTION_SAMPLE = 50_000
PHOTOS = "photos"
# What search looks in, in photos_fts column order: the caption, a person's caption, the
# beam's other captions (JSON: its words are words to FTS5), the photo's folder name and file
# stem ("Paris 2023/IMG_0412.jpg" is found by "paris").
FTS_COLUMNS = ["caption", "human_caption", "alternatives", "place", "keywords"]
# Their bm25 weights: the caption, a person's and their keywords count most; the other captions
# less (the model was less sure of them); a folder or file name less still.
FTS_WEIGHTS = (1.0, 1.0, 0.3, 0.5, 1.0)
# The columns whose matches come first: what the photo shows, in words (the others, the beam's
# runners-up and the folder and file name, rank below them).
CAPTION_COLUMNS = ("caption", "human_caption", "keywords")

# Where a photo's last failure happened (the ``stage`` column, beside its one-line ``error``):
# "discover" (its path could not be walked: a folder that cannot be read, a name that is not
# UTF-8), "decode", "model", or the output that could not be written ("xmp", "exif"). Failures
# before a caption exists clear the caption; an output's failure keeps it (a re-run writes
# that output again, and clears the failure once it is written).
FailureStage = Literal["discover", "decode", "model", "xmp", "exif"]
NO_CAPTION_STAGES: frozenset[str] = frozenset({"discover", "decode", "model"})

# Column order of the photos table; also the keys of a row dict.
PHOTO_COLUMNS: dict[str, type] = {
    "path": str,  # absolute path, primary key
    "caption": str,  # the sentence shown to users; NULL while failed / not captioned
    "score": float,  # mean log-probability per word (higher is better)
    "alternatives": str,  # JSON list of the other beam hypotheses
    "model_id": str,
    "captioned_at": str,  # ISO 8601 UTC
    # Comma-separated writers done with this caption, e.g. "exif,index,xmp": each holds it, or
    # does not apply to the photo (exif for a PNG); a re-run writes the others.
    "outputs": str,
    "size": int,  # bytes
    "mtime": str,  # ISO 8601 UTC, for people
    "mtime_ns": int,  # for change detection
    "content_hash": str,  # blake2b-256 hex of the file bytes
    "width": int,  # as displayed (EXIF orientation applied)
    "height": int,
    "format": str,  # JPEG, PNG, HEIF, ...
    "date_taken": str,  # EXIF DateTimeOriginal, ISO 8601 local time
    "camera": str,  # EXIF Make + Model
    "error": str,  # one-line reason of the last failure, NULL when fine
    "updated_at": str,  # ISO 8601 UTC of the last change of this row
    # A caption a person wrote (in the sidecar, EXIF, embedded XMP or IPTC), found while
    # captioning (photocap.metadata.authorship.find_human_caption); searched together with
    # ``caption``.
    "human_caption": str,
    # photocap.metadata.sidecars.sidecar_stamp after the last write: a re-run that finds it
    # changed looks at the sidecars again (an edit in another app) without captioning the
    # photo again.
    "sidecar_stamp": str,
    # photocap.image.DecodedPhoto.pixels_hash: the model's input when captioned. A photo whose
    # file changed but whose pixels did not (its metadata was edited) keeps its caption.
    "pixels_hash": str,
    # FailureStage of ``error`` (NULL when fine; NULL too in failure rows of earlier versions).
    "stage": str,
    # The photo's folder name and file stem ("Paris 2023 IMG_0412"): searched, so a photo is
    # found by where it is; not the whole path (its upper folders are every photo's).
    "place": str,
    # The keywords people gave the photo in its sidecars (dc:subject, Lightroom's hierarchical
    # subjects), ", "-joined: searched like a person's caption.
    "keywords": str,
}

# The photos' vectors in the text-image embedding (photocap.embedding.vector_bytes: float16),
# when the model had one: search orders its matches by meaning with them. A table of their own,
# keyed by the photo's rowid: a 1 KB blob in every row of ``photos`` made text search at
# 1,000,000 photos twice as slow (benchmarks/README.md). A trigger removes a photo's vector
# with its row, so a reused rowid never inherits one.
VECTORS = "photo_vectors"


# A fact a PhotoFacts leaves out: the row keeps what it holds.
_KEEP: Any = object()


@dataclass(frozen=True, kw_only=True)
class PhotoFacts:
    """What a run learnt about a photo besides its caption, for its row in ``photos``.

    A field left out keeps what the row holds; ``None`` clears it. Typed, so that a misspelt
    field is an error (a ``TypeError`` here, and mypy's), never a column silently not written.
    """

    size: int | None = _KEEP
    mtime: str | None = _KEEP
    mtime_ns: int | None = _KEEP
    content_hash: str | None = _KEEP
    pixels_hash: str | None = _KEEP
    width: int | None = _KEEP
    height: int | None = _KEEP
    format: str | None = _KEEP
    date_taken: str | None = _KEEP
    camera: str | None = _KEEP
    human_caption: str | None = _KEEP
    sidecar_stamp: str | None = _KEEP
    keywords: str | None = _KEEP
    outputs: str | None = _KEEP

    def given(self) -> dict[str, Any]:
        """The facts given, by column."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if value is not _KEEP}


@dataclass(frozen=True)
class PhotoRow:
    """One row of ``photos`` as the pipeline needs it."""

    path: str
    caption: str | None
    score: float | None
    alternatives: tuple[str, ...]
    model_id: str | None
    captioned_at: str | None
    outputs: frozenset[str]
    size: int | None
    mtime_ns: int | None
    content_hash: str | None
    error: str | None
    sidecar_stamp: str | None = None  # None: not recorded (a row from before migration 006)
    pixels_hash: str | None = None  # None: not recorded (a row from before migration 007)
    stage: str | None = None  # FailureStage of ``error``

    @property
    def is_captioned(self) -> bool:
        """It holds a caption: none failed, or only an output's write did (caption kept)."""
        if not self.caption:
            return False
        if self.error is None:
            return True
        return self.stage is not None and self.stage not in NO_CAPTION_STAGES


@dataclass(frozen=True)
class SearchHit:
    """One search result: the caption split into (text, is_match) segments for highlighting."""

    path: str
    caption: str
    segments: tuple[tuple[str, bool], ...]
    rank: float  # lower is better: bm25, or with search by meaning minus the fused score
    date_taken: str | None = None
    camera: str | None = None
    human_caption: str | None = None  # a person's own caption of the photo, if one was found
    human_segments: tuple[tuple[str, bool], ...] = ()
    # It matches the whole query; False: some of its words only (ranked after the others).
    complete: bool = True
    # Words matched outside the captions shown: (where, word), where is "alternatives" (the
    # beam's other captions), "place" (folder and file names) or "keywords".
    elsewhere: tuple[tuple[str, str], ...] = ()

    @property
    def matched(self) -> list[str]:
        """The words of the photo's texts that the query matched, each once, the captions'
        first."""
        found = [text for text, hit in (*self.segments, *self.human_segments) if hit]
        found += [word for _, word in self.elsewhere]
        first: dict[str, str] = {}  # each word once, whatever its case, as first found
        for word in found:
            first.setdefault(word.lower(), word)
        return list(first.values())

    @property
    def matched_in(self) -> list[str]:
        """Where the query matched: "caption", "human_caption" and the places of
        :attr:`elsewhere`."""
        where = ["caption"] if any(hit for _, hit in self.segments) else []
        where += ["human_caption"] if any(hit for _, hit in self.human_segments) else []
        return list(dict.fromkeys([*where, *(place for place, _ in self.elsewhere)]))


@dataclass(frozen=True)
class SearchFilter:
    """Which photos a search may return: below some folders, taken within some dates.

    ``taken_from`` / ``taken_before`` bound ``date_taken`` (ISO 8601 local time, compared as
    text: "2023-05" <= "2023-05-01T12:34:56" < "2023-06"); a photo without a date taken is left
    out when either is set. Build one from user input with :func:`make_search_filter`.
    """

    under: tuple[str, ...] = ()  # absolute folders (or photos)
    taken_from: str | None = None  # inclusive
    taken_before: str | None = None  # exclusive

    def sql(self) -> tuple[str, list[str]]:
        """A condition on ``photos`` columns (``"1"`` for no filter) and its parameters."""
        conds, params = [], []
        if self.under:
            ranges = []
            for folder in self.under:
                # Everything below "a/b" sorts in ["a/b/", "a/b0"): '0' follows '/' in ASCII.
                stem = folder.rstrip(os.sep)
                ranges.append("path = ? OR (path >= ? AND path < ?)")
                params += [folder, stem + os.sep, stem + chr(ord(os.sep) + 1)]
            conds.append("(" + " OR ".join(ranges) + ")")
        if self.taken_from:
            conds.append("date_taken >= ?")
            params.append(self.taken_from)
        if self.taken_before:
            conds.append("date_taken < ?")
            params.append(self.taken_before)
        return " AND ".join(conds) or "1", params


_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def make_search_filter(
    under: Iterable[str | os.PathLike[str]] = (), since: str | None = None, until: str | None = None
) -> SearchFilter:
    """A :class:`SearchFilter` from folders and dates as a user types them.

    ``since`` and ``until`` are ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``, both inclusive:
    ``until="2023"`` keeps all of 2023. Raises :class:`QueryError` for anything else.
    """

    def parse(text: str, option: str) -> tuple[date, str]:
        match = _DATE.fullmatch(text.strip())
        try:
            if not match:
                raise ValueError
            year, month, day = (int(g) if g else None for g in match.groups())
            when = date(year or 1, month or 1, day or 1)
        except ValueError:
            raise QueryError(
                f"{option} {text!r}: give a date as YYYY, YYYY-MM or YYYY-MM-DD"
            ) from None
        return when, ("day" if day else "month" if month else "year")

    taken_from = taken_before = None
    if since is not None:
        when, unit = parse(since, "--since")
        taken_from = when.isoformat()[: {"year": 4, "month": 7, "day": 10}[unit]]
    if until is not None:
        when, unit = parse(until, "--until")
        if unit == "day":
            end = when + timedelta(days=1)
        elif unit == "month":
            end = date(when.year + when.month // 12, when.month % 12 + 1, 1)
        else:
            end = date(when.year + 1, 1, 1)
        taken_before = end.isoformat()
    folders = tuple(os.path.abspath(os.fspath(p)) for p in under)
    return SearchFilter(under=folders, taken_from=taken_from, taken_before=taken_before)


class IndexFailure(NamedTuple):
    """A photo whose last run failed: its one-line reason and where (:data:`FailureStage`;
    None for a failure an earlier version recorded)."""

    path: str
    error: str
    stage: str | None


@dataclass(frozen=True)
class IndexStats:
    """Counts for ``photocap status`` / ``photocap info``."""

    path: str
    photos: int
    captioned: int
    failed: int
    models: dict[str, int]
    last_captioned_at: str | None
    file_size: int
    failures: list[IndexFailure] = field(default_factory=list)  # the first N, by path
    # Of ``captioned``, those also counted in ``failed``: the caption made, an output not
    # written (a run counts them as failed only).
    captioned_not_written: int = 0


# ----------------------------------------------------------------------------- migrations


def _m001_create_photos(db: sqlite_utils.Database) -> None:
    db[PHOTOS].create(PHOTO_COLUMNS, pk="path", not_null={"path"}, if_not_exists=True)  # type: ignore[union-attr]


def _m002_enable_fts(db: sqlite_utils.Database) -> None:
    db.table(PHOTOS).enable_fts(["caption"], tokenize="porter unicode61", create_triggers=True)


def _m003_index_hash(db: sqlite_utils.Database) -> None:
    db.table(PHOTOS).create_index(["content_hash"], if_not_exists=True)
    db.table(PHOTOS).create_index(["error"], if_not_exists=True)


def _m004_index_date_taken(db: sqlite_utils.Database) -> None:
    # search --since/--until: a range on the index instead of a scan of every row.
    db.table(PHOTOS).create_index(["date_taken"], if_not_exists=True)


def _m005_search_human_captions(db: sqlite_utils.Database) -> None:
    # search finds a person's own caption too ("grandma"); FTS5 cannot add a column, so the
    # full-text index is rebuilt over both (once; idempotent if interrupted).
    table = db.table(PHOTOS)
    if "human_caption" not in table.columns_dict:
        table.add_column("human_caption", str)
    table.enable_fts(
        ["caption", "human_caption"], tokenize="porter unicode61", create_triggers=True,
        replace=True,
    )  # fmt: skip


def _m006_sidecar_stamp(db: sqlite_utils.Database) -> None:
    # NULL in older rows: their sidecars are looked at once by the next run, then recorded.
    if "sidecar_stamp" not in db.table(PHOTOS).columns_dict:
        db.table(PHOTOS).add_column("sidecar_stamp", str)


def _m007_pixels_hash(db: sqlite_utils.Database) -> None:
    # NULL in older rows: recorded the next time each photo is decoded.
    if "pixels_hash" not in db.table(PHOTOS).columns_dict:
        db.table(PHOTOS).add_column("pixels_hash", str)


def _m008_index_pixels_hash(db: sqlite_utils.Database) -> None:
    # find_moved and find_copy look photos up by their pixels (tagged on the way; copies).
    db.table(PHOTOS).create_index(["pixels_hash"], if_not_exists=True)


def _m009_failure_stage(db: sqlite_utils.Database) -> None:
    # NULL in older rows (their failures were all before a caption: decode or model).
    if "stage" not in db.table(PHOTOS).columns_dict:
        db.table(PHOTOS).add_column("stage", str)


def _m010_search_more_text(db: sqlite_utils.Database) -> None:
    # search finds the beam's other captions, folder / file names and sidecar keywords too;
    # the full-text index is rebuilt over all five (once; idempotent if interrupted).
    table = db.table(PHOTOS)
    if "place" not in table.columns_dict:
        table.add_column("place", str)
    if "keywords" not in table.columns_dict:
        table.add_column("keywords", str)
    rows = db.execute("SELECT rowid, path FROM photos WHERE place IS NULL").fetchall()
    db.conn.executemany(
        "UPDATE photos SET place = ? WHERE rowid = ?", [(place_of(p), r) for r, p in rows]
    )
    db.table(PHOTOS).enable_fts(
        FTS_COLUMNS, tokenize="porter unicode61", create_triggers=True, replace=True
    )


def _m011_index_review_order(db: sqlite_utils.Database) -> None:
    # The gallery's review page (PhotoIndex.list_photos(review=True)) walks this order: failures
    # first, then the least confident captions, those a person wrote or corrected last.
    # Without the index a deep page sorted every row (0.4 s a page at 100,000 photos).
    db.execute(
        "CREATE INDEX IF NOT EXISTS photos_review "
        "ON photos ((error IS NULL), (human_caption IS NOT NULL), score, path)"
    )


def _m012_photo_vectors(db: sqlite_utils.Database) -> None:
    db.execute(f"CREATE TABLE IF NOT EXISTS {VECTORS} (id INTEGER PRIMARY KEY, vector BLOB)")
    db.execute(
        f"CREATE TRIGGER IF NOT EXISTS {VECTORS}_follow AFTER DELETE ON {PHOTOS} "
        f"BEGIN DELETE FROM {VECTORS} WHERE id = old.rowid; END"
    )


# Append only; never rename or reorder: the names are recorded in existing databases.
MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("001_create_photos", _m001_create_photos),
    ("002_enable_fts_caption", _m002_enable_fts),
    ("003_index_content_hash_error", _m003_index_hash),
    ("004_index_date_taken", _m004_index_date_taken),
    ("005_search_human_captions", _m005_search_human_captions),
    ("006_sidecar_stamp", _m006_sidecar_stamp),
    ("007_pixels_hash", _m007_pixels_hash),
    ("008_index_pixels_hash", _m008_index_pixels_hash),
    ("009_failure_stage", _m009_failure_stage),
    ("010_search_other_captions_names_keywords", _m010_search_more_text),
    ("011_index_review_order", _m011_index_review_order),
    ("012_photo_vectors", _m012_photo_vectors),
]


_M = TypeVar("_M", bound=Callable[..., Any])


def _sqlite_errors(method: _M) -> _M:
    """Report SQLite's errors in a :class:`PhotoIndex` method as one-line IndexDbErrors: a page
    damaged after the index was opened (bit rot, a full disk, a lock held past the busy timeout)
    must not end a run with a traceback."""

    @functools.wraps(method)
    def wrapper(self: PhotoIndex, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as err:
            raise index_error(self.path, err) from None

    return wrapper  # type: ignore[return-value]


def _error_code(err: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``err`` (its extended code's low byte), if known."""
    code = getattr(err, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def index_error(path: Path, err: sqlite3.Error, doing: str = "") -> IndexDbError:
    """The one-line error for ``err`` on the index at ``path`` (``doing``: "open", "write to",
    or nothing for a read); for a damaged file, what to do."""
    hint = ""
    code = _error_code(err)  # SQLITE_READONLY_DBMOVED, SQLITE_CORRUPT_INDEX, ... count too
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        hint = f" (the file is damaged: `sqlite3 {path} .recover` can save its rows)"
    elif code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN) and not _writable(path):
        hint = " (it is read-only here: read-only media or permissions; --db FILE for another)"
    where = f"cannot {doing} index" if doing else "index"
    return IndexDbError(f"{where} {path}: {err}{hint}")


class PhotoIndex:
    """An open caption index. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        memory = os.fspath(path) == ":memory:"
        # What this open creates (folders, the index, its -wal, -shm and lock files) is
        # removed again if it fails (a full disk): nothing half-made is left behind. (Only a
        # second run creating the same new index at the same moment could lose it to this.)
        made = [] if memory else _not_there(self.path)
        try:
            self._open(path, memory, create)
        except BaseException:
            with contextlib.suppress(AttributeError, sqlite3.Error):
                self.db.close()
            _remove(made)
            raise

    def _open(self, path: str | os.PathLike[str], memory: bool, create: bool) -> None:
        if not memory:
            if not create and not self.path.exists():
                raise IndexDbError(f"no index at {self.path} (run `photocap caption` first)")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise IndexDbError(
                    f"cannot create folder {self.path.parent}: {err.strerror}"
                ) from None
        # An index on read-only media (a card, a disc, a read-only share) is read as it is:
        # WAL needs its folder writable, and a migration writes. "immutable" tells SQLite that
        # nothing else changes it either, so it needs no lock or -shm file.
        self.read_only = not (memory or create or _writable(self.path))
        self._human_fts: bool | None = None  # whether photos_fts has human_caption (005)
        self._vocabulary: list[str] | None = None  # captions' words, most frequent first
        self._fts_columns: int | None = None  # columns of photos_fts (2 before migration 010)
        self._vector_table: bool | None = None  # photo_vectors exists (012)
        # A -wal file left by a writer that never closed the index (killed, a card pulled out)
        # holds committed changes that "immutable" would not read: the index would look old,
        # or empty. SQLite then reads it through the WAL, which read-only media allow when
        # the -shm file was left there too.
        wal_left = self.read_only and _non_empty(self.path.with_name(self.path.name + "-wal"))
        try:
            if self.read_only:
                mode = "mode=ro" if wal_left else "mode=ro&immutable=1"
                uri = f"{self.path.resolve().as_uri()}?{mode}"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            else:
                conn = sqlite3.connect(
                    os.fspath(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
                )
            self.db = sqlite_utils.Database(conn)
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not self.read_only:
                if not memory and self.db.journal_mode != "wal":
                    # Switching to WAL takes an exclusive lock without waiting for a busy one:
                    # two runs opening a new index at once would see "database is locked".
                    # One switches at a time (under the migrations' lock); the other then finds
                    # WAL on.
                    with _file_lock(self.path):
                        if self.db.journal_mode != "wal":
                            self.db.enable_wal()
                self.db.execute("PRAGMA synchronous = NORMAL")  # safe in WAL mode, much faster
                self._migrate()
            # A read-only index an earlier version wrote may lack later columns: read as NULL.
            self._row_sql = _ROW_SQL
            self._has_stage = True
            if self.read_only:
                have = self.db.table(PHOTOS).columns_dict
                for column in ("sidecar_stamp", "pixels_hash", "stage"):
                    if column not in have:
                        self._row_sql = self._row_sql.replace(column, "NULL")
                self._has_stage = "stage" in have
            # A row whose caption stands: no failure, or only an output's (the caption kept).
            self._caption_ok = "photos.error IS NULL" + (
                " OR photos.stage NOT IN ('discover', 'decode', 'model')" if self._has_stage else ""
            )
        except sqlite3.DatabaseError as err:
            if wal_left and _error_code(err) == sqlite3.SQLITE_CANTOPEN:  # no -shm, none to make
                raise IndexDbError(
                    f"cannot read index {self.path}: its last changes are in "
                    f"{self.path.name}-wal, which cannot be read where the index cannot be "
                    "written (read-only media, permissions); open it once where it can be"
                ) from None
            raise index_error(self.path, err, "open") from None
        except UnicodeDecodeError:  # SQLite's error message quotes bytes of a damaged schema
            raise IndexDbError(
                f"cannot open index {self.path}: database disk image is malformed"
            ) from None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> PhotoIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.db.conn.in_transaction:
                self.db.conn.rollback()
            self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction. ``BEGIN IMMEDIATE`` takes the write lock up front (waiting up
        to the busy timeout), so concurrent runs serialise instead of failing mid-transaction."""
        conn = self.db.conn
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()

    def _migrate(self) -> None:
        if self._pending_migrations():
            with _file_lock(self.path):  # only one process migrates; the others wait, then see none
                for name, migrate in MIGRATIONS:
                    if name in self._applied_migrations():
                        continue
                    migrate(self.db)
                    self.db.commit()
                    self.db.table("_migrations").insert(
                        {"name": name, "applied_at": _utcnow()}, pk="name", replace=True
                    )
                    self.db.commit()

    def _applied_migrations(self) -> set[str]:
        if not self.db.table("_migrations").exists():
            return set()
        return {row[0] for row in self.db.execute("SELECT name FROM _migrations").fetchall()}

    def _pending_migrations(self) -> list[str]:
        applied = self._applied_migrations()
        return [name for name, _ in MIGRATIONS if name not in applied]

    @_sqlite_errors
    def applied_migrations(self) -> list[str]:
        """Names of the migrations recorded in this database, in order applied."""
        return [row[0] for row in self.db.execute("SELECT name FROM _migrations ORDER BY rowid")]

    # ------------------------------------------------------------------ reads

    @_sqlite_errors
    def get(self, path: str | os.PathLike[str]) -> PhotoRow | None:
        """The row for ``path`` (absolute), or None."""
        cur = self.db.execute(
            f"SELECT {self._row_sql} FROM photos WHERE path = ?", [os.fspath(path)]
        )
        row = cur.fetchone()
        return _to_row(row) if row else None

    @_sqlite_errors
    def get_vector(self, path: str | os.PathLike[str]) -> bytes | None:
        """The vector of the row of ``path`` in the text-image embedding, or None (a row
        captioned before photocap stored vectors has none)."""
        if not self._has_vectors():
            return None
        cur = self.db.execute(
            f"SELECT vector FROM {VECTORS} WHERE id = (SELECT rowid FROM photos WHERE path = ?)",
            [os.fspath(path)],
        )
        row = cur.fetchone()
        return bytes(row[0]) if row is not None and row[0] is not None else None

    @_sqlite_errors
    def has_vector(self, path: str | os.PathLike[str], size: int | None = None) -> bool:
        """Whether the row of ``path`` has a vector (:meth:`get_vector`) of ``size`` bytes (any:
        None), without reading it."""
        if not self._has_vectors():
            return False
        row = "(SELECT rowid FROM photos WHERE path = ?)"
        sized = "" if size is None else " AND length(vector) = ?"
        cur = self.db.execute(
            f"SELECT 1 FROM {VECTORS} WHERE id = {row}{sized}",
            [os.fspath(path), *([size] if size is not None else [])],
        )
        return cur.fetchone() is not None

    @_sqlite_errors
    def get_dict(self, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The full row for ``path`` as a dict (all columns), or None."""
        rows = list(self.db.query("SELECT * FROM photos WHERE path = ?", [os.fspath(path)]))
        return rows[0] if rows else None

    @_sqlite_errors
    def find_moved(
        self,
        content_hash: str,
        new_path: str | os.PathLike[str],
        pixels_hash: str | None = None,
    ) -> PhotoRow | None:
        """A captioned row whose file is gone, with this content or, failing that, these
        pixels: the photo was moved or renamed (and maybe its metadata edited on the way, as
        Lightroom and digiKam do when they move and tag photos)."""
        # One indexed lookup per hash: with "content_hash = ? OR pixels_hash = ?" SQLite's
        # planner walks the error index instead, every row (9 ms a photo at 50,000 rows).
        for column, value in (("content_hash", content_hash), ("pixels_hash", pixels_hash)):
            if value is None:
                continue
            cur = self.db.execute(
                f"SELECT {self._row_sql} FROM photos WHERE {column} = ? AND path != ? "
                "AND caption IS NOT NULL AND error IS NULL ORDER BY captioned_at DESC",
                [value, os.fspath(new_path)],
            )
            for row in cur.fetchall():
                if not os.path.lexists(row[0]):
                    return _to_row(row)
        return None

    @_sqlite_errors
    def find_copy(self, pixels_hash: str, new_path: str | os.PathLike[str]) -> PhotoRow | None:
        """A captioned row of another photo with these pixels (a copy, an export with other
        metadata, a duplicate in a backup folder): the model would say the same."""
        cur = self.db.execute(
            f"SELECT {self._row_sql} FROM photos WHERE pixels_hash = ? AND path != ? "
            "AND caption IS NOT NULL AND error IS NULL ORDER BY captioned_at DESC LIMIT 1",
            [pixels_hash, os.fspath(new_path)],
        )
        row = cur.fetchone()
        return None if row is None else _to_row(row)

    @_sqlite_errors
    def get_by_id(self, photo_id: int) -> dict[str, Any] | None:
        """The row whose SQLite rowid is ``photo_id`` (the gallery's id of a photo), all
        columns and ``id``; None when there is none."""
        rows = list(self.db.query("SELECT rowid AS id, * FROM photos WHERE rowid = ?", [photo_id]))
        return rows[0] if rows else None

    @_sqlite_errors
    def rows_by_path(self, paths: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The rows of ``paths`` (all columns and ``id``), by path; paths not in the index are
        left out."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(paths), 500):  # SQLite's limit on parameters
            chunk = list(paths[start : start + 500])
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT rowid AS id, * FROM photos WHERE path IN ({marks})"
            found |= {row["path"]: row for row in self.db.query(sql, chunk)}
        return found

    @_sqlite_errors
    def list_photos(
        self, *, offset: int = 0, limit: int = 50, review: bool = False
    ) -> list[dict[str, Any]]:
        """A page of rows (all columns and ``id``): the most recently indexed first; with
        ``review``, failures first, then captions from the model's least confident (lowest
        score) up, the order in which a person checks them; photos with a person's caption
        (checked already) last."""
        order = "error IS NULL, human_caption IS NOT NULL, score, path" if review else "rowid DESC"
        sql = f"SELECT rowid AS id, * FROM photos ORDER BY {order} LIMIT ? OFFSET ?"
        return list(self.db.query(sql, [max(0, int(limit)), max(0, int(offset))]))

    @_sqlite_errors
    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM photos").fetchone()[0])

    def iter_paths(self) -> Iterator[str]:
        try:
            for (path,) in self.db.execute("SELECT path FROM photos ORDER BY path"):
                yield path
        except sqlite3.DatabaseError as err:
            raise index_error(self.path, err) from None

    @_sqlite_errors
    def search(
        self,
        query: str,
        limit: int = 20,
        *,
        only: SearchFilter | None = None,
        rank_window: int | None = RANK_WINDOW,
        near: Callable[[str], list[str]] | None = None,
        meaning: Callable[[str], Any] | None = None,
        meaning_model: str | None = None,
    ) -> list[SearchHit]:
        """Full-text search over captions (photocap's and a person's), best first (bm25), with
        matches highlighted.

        ``query`` is read by :func:`photocap.query.parse_query`: words (stemmed: "dogs
        running" finds "A dog runs"; irregular plurals too), ``"phrases"``, ``OR``, ``-word``
        or ``NOT word``; nothing a user types forms FTS5 syntax of its own, and nothing raises.
        Photos matching every word come first; then, for a query of several words (a sentence
        typed as the query), photos matching some of them, ranked by how much they match
        (bm25 over the matched words; their :attr:`SearchHit.complete` is False). Function
        words ("a", "the", "on") are left out of a query that has other words. With ``near``
        (a word -> its near words: :meth:`photocap.lexicon.NearWords.of`), photos found
        through near words follow those with the words typed ("kid": a caption with "kid",
        then ones with "boy", "child"...).

        ``only`` keeps photos below some folders / taken within some dates; it applies before
        the ranking window below, so a folder of old photos is searched whole.

        With ``meaning`` (a query -> its unit vector: :meth:`photocap.embedding.QueryEncoder.
        encode`) and ``meaning_model`` (the model whose photo vectors it compares with), the
        matches of each tier are ordered by meaning too: its best :data:`MEANING_POOL` by bm25
        (whatever ``limit`` is) are ranked again by fusing the bm25 order with the order by
        cosine (:func:`fuse_ranks`), the rest follow in bm25 order; photos without a vector
        (captioned before) keep their bm25 rank in the fusion. Words left out (``-cat``) are
        not part of the meaning. Which photos a tier holds, and the order of the tiers, do not
        change; ``rank`` is then minus the fused score (lower is still better).

        Ranking happens inside FTS5 (``bm25`` with ``ORDER BY ... LIMIT``) on row ids only; the
        ``photos`` rows and ``highlight()`` are read for the top rows alone. Equal scores are
        ordered by path. When a query matches more than ``rank_window`` captions (a very
        common word such as "a" or "dog" on a large index), only the ``rank_window`` most
        recently indexed matches are ranked, so latency stays bounded (bm25 costs ~1 us per
        match); ``rank_window=None`` ranks every match. Scores use the whole index's statistics
        either way.
        """
        from photocap.query import parse_query

        parsed = parse_query(query)
        if parsed.is_empty or limit <= 0:
            return []
        want = int(limit)
        from photocap.query import meaning_text

        query_vector = None
        if meaning is not None and meaning_text(query):
            # What the query means, without the words it leaves out; compared with the vectors
            # of photos captioned by ``meaning_model`` only (another's are another space).
            query_vector = (meaning(meaning_text(query)), meaning_model)
        # Every word typed in a caption, a person's caption or the keywords first; then every
        # word anywhere (the beam's runners-up, the folder and file name count too).
        everywhere = parsed.all_of()
        in_captions = self._in_captions(everywhere)
        hits = self._ranked(everywhere, want, only, rank_window, query_vector, in_captions)
        # Then, while there is room, each tier ranked below the one before: some of the words
        # typed (a sentence query; measured better than all of them through near words), all
        # of them through their near words, some of them through near words.
        wider = parsed.expanded(near) if near is not None else parsed
        several = len(parsed.groups) > 1
        tiers = [everywhere, parsed.any_of() if several else "", wider.all_of(),
                 wider.any_of() if several else ""]  # fmt: skip
        done = {everywhere} if not in_captions else set()
        for fts in tiers:
            if len(hits) >= want or not fts or fts in done:
                continue
            done.add(fts)
            found = {hit.path for hit in hits}
            more = self._ranked(fts, want + len(hits), only, rank_window, query_vector)
            complete = fts == everywhere
            hits += [replace(h, complete=complete) for h in more if h.path not in found]
        return hits[:want]

    def _in_captions(self, fts: str) -> str:
        """``fts`` within the captions and keywords only (an FTS5 column filter); "" on an index
        without other columns (nothing to rank below them)."""
        if self._fts_columns is None:
            self._fts_columns = len(self.db.table(f"{PHOTOS}_fts").columns_dict)
        present = FTS_COLUMNS[: self._fts_columns]
        strong = [c for c in CAPTION_COLUMNS if c in present]
        if not fts or len(strong) == len(present):
            return ""
        return f"{{{' '.join(strong)}}} : ({fts})"

    def _ranked(
        self,
        fts: str,
        want: int,
        only: SearchFilter | None,
        rank_window: int | None,
        query_vector: Any = None,
        within: str = "",
    ) -> list[SearchHit]:
        """The ``want`` best photos for the FTS5 query ``fts`` (see :meth:`search`), ranked by
        its bm25; with ``within``, only photos that FTS5 query matches too."""
        conn = self.db.conn
        try:
            where, params = "photos_fts MATCH ?", [fts]
            bounds, bound_params = "", []  # the rowid range searched, for ``within`` too
            if only is not None and only != SearchFilter():
                cond, values = only.sql()
                span = conn.execute(
                    f"SELECT min(rowid), max(rowid) FROM photos WHERE {cond}", values
                ).fetchone()
                if span[0] is None:
                    return []
                # FTS5 walks only the filtered photos' rowid span (a folder's photos were
                # mostly indexed together); within it "+rowid IN" is tested per match. A bare
                # "rowid IN" would be handed to FTS5, which runs the query again for every id.
                where += " AND rowid BETWEEN ? AND ? AND +rowid IN "
                where += f"(SELECT rowid FROM photos WHERE {cond})"
                params += [*span, *values]
                bounds, bound_params = " AND rowid BETWEEN ? AND ?", [*span]
            if rank_window:
                # The window-th newest match; None when there are fewer matches than that.
                floor = conn.execute(
                    f"SELECT rowid FROM photos_fts WHERE {where} "
                    "ORDER BY rowid DESC LIMIT 1 OFFSET ?",
                    [*params, max(int(rank_window), 4 * want) - 1],
                ).fetchone()
                if floor is not None:
                    where, params = where + " AND rowid >= ?", [*params, floor[0]]
                    bounds, bound_params = bounds + " AND rowid >= ?", [*bound_params, floor[0]]
            if within:
                # Only rows ``within`` matches too, in the same rowid range (a set built once:
                # "+rowid" is tested per match, not handed to FTS5).
                where += " AND +rowid IN (SELECT rowid FROM photos_fts WHERE photos_fts MATCH ?"
                where += f"{bounds})"
                params += [within, *bound_params]
            fetch = 2 * want  # a margin for rows with an error and for ties at the cut
            if query_vector is not None:
                fetch = max(fetch, MEANING_POOL)
            while True:
                top = conn.execute(
                    f"SELECT rowid, {self._bm25()} AS r FROM photos_fts WHERE {where} "
                    "ORDER BY r, rowid LIMIT ?",
                    [*params, fetch],
                ).fetchall()
                ranks = dict(top)
                if query_vector is not None and ranks:
                    ranks = self._by_meaning(top, *query_vector)
                order = sorted(ranks, key=lambda row: (ranks[row], row))
                # highlight() and the photos join for the best rows only (more when rows with
                # an error fall out)
                take = 2 * want + 16
                while True:
                    hits = self._hits(fts, {row: ranks[row] for row in order[:take]})
                    if len(hits) >= want or take >= len(order):
                        break
                    take *= 4
                if len(hits) >= want or len(top) < fetch:
                    return hits[:want]
                fetch *= 4
        except sqlite3.OperationalError as err:
            raise IndexDbError(f"search failed: {err}") from None

    def _by_meaning(
        self, top: list[tuple[int, float]], query: Any, model_id: str | None
    ) -> dict[int, float]:
        """Row id -> rank for ``top`` (row ids and bm25, best first): the first
        :data:`MEANING_POOL` fused with the order by meaning (:func:`fuse_ranks`, all < 0),
        the rest after them in bm25 order."""
        pool = dict(top[:MEANING_POOL])
        ranks = fuse_ranks(pool, self._vectors(list(pool), model_id, len(query)), query)
        ranks |= {row: float(k) for k, (row, _) in enumerate(top[MEANING_POOL:])}
        return ranks

    def _vectors(self, ids: list[int], model_id: str | None, dim: int) -> dict[int, bytes]:
        """The embedding vectors of the rows ``ids`` that have one of ``dim`` values, made by
        the model ``model_id`` (any model: None)."""
        found: dict[int, bytes] = {}
        if not self._has_vectors():
            return found
        same_model = "" if model_id is None else " AND p.model_id = ?"
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            found |= dict(self.db.conn.execute(
                f"SELECT v.id, v.vector FROM {VECTORS} v JOIN photos p ON p.rowid = v.id "
                f"WHERE v.id IN ({marks}) AND length(v.vector) = ?{same_model}",
                [*chunk, 2 * dim, *([model_id] if model_id is not None else [])],
            ).fetchall())  # fmt: skip
        return found

    def _has_vectors(self) -> bool:
        # A read-only index is not migrated: before 012 it has no vectors.
        if self._vector_table is None:
            self._vector_table = self.db.table(VECTORS).exists()
        return self._vector_table

    def _hits(self, fts: str, ranks: dict[int, float]) -> list[SearchHit]:
        """SearchHits for the given FTS row ids (id -> bm25), best first, ties by path."""
        ids = sorted(ranks)
        # An index opened read-only is not migrated: before 005 it has no human captions.
        human = (
            "photos.human_caption, highlight(photos_fts, 1, char(2), char(3))"
            if self._searches_human_captions()
            else "NULL, NULL"
        )
        if self._fts_columns is None:
            self._fts_columns = len(self.db.table(f"{PHOTOS}_fts").columns_dict)
        # The other columns' matches (an index opened read-only may predate some of them).
        others = [(k, name) for k, name in enumerate(FTS_COLUMNS) if 2 <= k < self._fts_columns]
        other_sql = "".join(f", highlight(photos_fts, {k}, char(2), char(3))" for k, _ in others)
        rows: list[Any] = []
        for start in range(0, len(ids), 500):  # well below SQLite's limit on bound variables
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            # One FTS scan over the chunk's id range; "+rowid IN" is tested per row instead of
            # being handed to FTS5, which would restart the query once per id (slow for prefix
            # queries). highlight() and the photos join run for the listed rows only.
            rows += self.db.conn.execute(
                "SELECT photos.rowid, photos.path, photos.caption, "
                "highlight(photos_fts, 0, char(2), char(3)), photos.date_taken, photos.camera, "
                f"{human}{other_sql} "
                "FROM photos_fts CROSS JOIN photos ON photos.rowid = photos_fts.rowid "  # FTS first
                "WHERE photos_fts MATCH ? AND photos_fts.rowid BETWEEN ? AND ? "
                f"AND +photos_fts.rowid IN ({marks}) AND ({self._caption_ok})",
                [fts, chunk[0], chunk[-1], *chunk],
            ).fetchall()
        hits = [
            SearchHit(
                path=r[1], caption=r[2], segments=_segments(r[3]), rank=float(ranks[r[0]]),
                date_taken=r[4], camera=r[5], human_caption=r[6],
                human_segments=_segments(r[7]) if r[6] else (),
                elsewhere=tuple(
                    (name, text) for (_, name), marked in zip(others, r[8:], strict=True)
                    for text, hit in _segments(marked or "") if hit
                ),
            )
            for r in rows
        ]  # fmt: skip
        hits.sort(key=lambda h: (h.rank, h.path))
        return hits

    @_sqlite_errors
    def suggest(self, query: str) -> dict[str, str]:
        """For each word of ``query`` that no caption holds, the closest word the index's
        captions do hold ("dgo" -> "dog"), when one is close enough: for "did you mean"."""
        import difflib

        from photocap.query import parse_query

        unknown = [
            word
            for word in dict.fromkeys(parse_query(query).words)
            if not self.db.conn.execute(
                "SELECT 1 FROM photos_fts WHERE photos_fts MATCH ? LIMIT 1", [f'"{word}"']
            ).fetchone()
        ]
        if not unknown:
            return {}
        if self._vocabulary is None:
            self._vocabulary = self._caption_words()
        out = {}
        for word in unknown:
            close = difflib.get_close_matches(word, self._vocabulary, n=1, cutoff=0.6)
            if close:
                out[word] = close[0]
        return out

    def _caption_words(self, sample: int = SUGGESTION_SAMPLE) -> list[str]:
        """The words of the captions (photocap's and people's) as written, most frequent first:
        what a suggestion may offer (never a stem, nor a word of a path). From the newest
        ``sample`` rows: their words are the library's words."""
        import re
        from collections import Counter

        counts: Counter[str] = Counter()
        human = "human_caption" if self._searches_human_captions() else "NULL"
        rows = self.db.execute(
            f"SELECT caption, {human} FROM photos ORDER BY rowid DESC LIMIT ?", [sample]
        )
        for caption, person in rows:
            for text in (caption, person):
                if text:
                    counts.update(re.findall(r"[^\W\d_]+", text.lower()))
        return [word for word, _ in counts.most_common()]

    def _bm25(self) -> str:
        """bm25 with the columns' weights (an index opened read-only may predate some)."""
        if self._fts_columns is None:
            self._fts_columns = len(self.db.table(f"{PHOTOS}_fts").columns_dict)
        weights = ", ".join(str(w) for w in FTS_WEIGHTS[: self._fts_columns])
        return f"bm25(photos_fts, {weights})"

    def _searches_human_captions(self) -> bool:
        if self._human_fts is None:
            self._human_fts = "human_caption" in self.db.table(f"{PHOTOS}_fts").columns_dict
        return self._human_fts

    @_sqlite_errors
    def stats(self, failures_limit: int = 50) -> IndexStats:
        """Counts of photos, captioned, failed, per model; the first failures with reasons.

        A photo whose caption was made but one of whose outputs failed counts as captioned
        (its caption is in the index, and found by search) and as failed."""
        captioned = f"caption IS NOT NULL AND ({self._caption_ok})"
        one = self.db.execute(
            f"SELECT count(*), sum({captioned}), sum(error IS NOT NULL), "
            f"max(captioned_at), sum(({captioned}) AND error IS NOT NULL) FROM photos"
        ).fetchone()
        models = dict(
            self.db.execute(
                f"SELECT model_id, count(*) FROM photos WHERE {captioned} "
                "GROUP BY model_id ORDER BY count(*) DESC"
            ).fetchall()
        )
        stage = "stage" if self._has_stage else "NULL"  # read-only, from before 009
        failures = [
            IndexFailure(p, e, s)
            for p, e, s in self.db.execute(
                f"SELECT path, error, {stage} FROM photos WHERE error IS NOT NULL "
                "ORDER BY path LIMIT ?",
                [failures_limit],
            )
        ]
        file_size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                file_size += os.path.getsize(os.fspath(self.path) + suffix)
        return IndexStats(
            path=os.fspath(self.path), photos=int(one[0] or 0), captioned=int(one[1] or 0),
            failed=int(one[2] or 0), models=models, last_captioned_at=one[3],
            file_size=file_size, failures=failures, captioned_not_written=int(one[4] or 0),
        )  # fmt: skip

    @_sqlite_errors
    def integrity_ok(self) -> bool:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # ------------------------------------------------------------------ writes

    @_sqlite_errors
    def set_vectors(self, vectors: dict[str, bytes | None]) -> None:
        """Each photo's vector (by path; None removes it), in one transaction; paths without
        a row are left out."""
        with self.transaction():
            for path, vector in vectors.items():
                if vector is None:
                    row = "(SELECT rowid FROM photos WHERE path = ?)"
                    self.db.execute(f"DELETE FROM {VECTORS} WHERE id = {row}", [index_key(path)])
                else:
                    self.db.execute(
                        f"INSERT OR REPLACE INTO {VECTORS} (id, vector) "
                        "SELECT rowid, ? FROM photos WHERE path = ?",
                        [vector, index_key(path)],
                    )

    @_sqlite_errors
    def update_photo(self, path: str | os.PathLike[str], facts: PhotoFacts) -> None:
        """Change the given facts of the row of ``path`` (a person's caption saved in the
        gallery, the file's new size and hash), in one transaction; nothing else changes."""
        self.upsert_photos([{"path": index_key(path), **facts.given(), "updated_at": _utcnow()}])

    @_sqlite_errors
    def upsert_photos(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or update full/partial rows (keys from :data:`PHOTO_COLUMNS`) in one transaction.

        Only the given columns change, so a failure row keeps nothing stale by passing NULLs
        explicitly, and a carried-over row keeps its caption.
        """
        if not rows:
            return
        with self.transaction():
            for row in rows:
                if "path" in row and "place" not in row:
                    row = {**row, "place": place_of(row["path"])}
                cols = [c for c in row if c in PHOTO_COLUMNS]
                values = [_sql_value(row[c]) for c in cols]
                updates = ", ".join(f"[{c}] = excluded.[{c}]" for c in cols if c != "path")
                self.db.execute(
                    f"INSERT INTO photos ({', '.join(f'[{c}]' for c in cols)}) "
                    f"VALUES ({', '.join('?' for _ in cols)}) "
                    f"ON CONFLICT(path) DO UPDATE SET {updates}",
                    values,
                )

    @_sqlite_errors
    def forget_failures(self, stage: str, under: Sequence[str], keep: frozenset[str]) -> None:
        """Delete the rows of ``stage`` failures at or below ``under`` (index keys), except
        those in ``keep``: paths that could not be walked once and now can (or are gone)."""
        cond, params = SearchFilter(under=tuple(under)).sql()
        gone = [
            (path,)
            for (path,) in self.db.execute(
                f"SELECT path FROM photos WHERE stage = ? AND ({cond})", [stage, *params]
            )
            if path not in keep
        ]
        if gone:
            with self.transaction():
                self.db.conn.executemany("DELETE FROM photos WHERE path = ?", gone)

    @_sqlite_errors
    def move_photo(self, old_path: str, new_path: str) -> None:
        """Give a row a new path (moved/renamed photo); replaces any row already at new_path."""
        with self.transaction():
            self.db.execute("DELETE FROM photos WHERE path = ?", [new_path])
            self.db.execute(
                "UPDATE photos SET path = ?, place = ? WHERE path = ?",
                [new_path, place_of(new_path), old_path],
            )

    @_sqlite_errors
    def captioned_under(self, under: Iterable[str | os.PathLike[str]]) -> list[str]:
        """Paths of the rows with a caption of photocap's, below (or at) the ``under`` paths,
        as given or with symlinks resolved (a photo captioned through a symlinked folder is
        found through the real one, and the other way round)."""
        given = [os.path.abspath(os.fspath(p)) for p in under]
        prefixes = sorted({*given, *(os.path.realpath(p) for p in given)})

        def below(path: str) -> bool:
            return any(path == p or path.startswith(p.rstrip(os.sep) + os.sep) for p in prefixes)

        rows = self.db.execute("SELECT path FROM photos WHERE caption IS NOT NULL ORDER BY path")
        return [path for (path,) in rows if below(path) or below(os.path.realpath(path))]

    @_sqlite_errors
    def forget_captions(self, paths: Sequence[str]) -> None:
        """Clear photocap's caption from these rows (``photocap revert`` took it out of the
        files): search no longer finds it, and the next run captions the photo again. A
        person's caption found in the photo stays; a failure to write the caption that is gone
        (an xmp or exif stage) goes with it."""
        with self.transaction():
            self.db.conn.executemany(
                "UPDATE photos SET caption = NULL, score = NULL, alternatives = NULL, "
                "model_id = NULL, captioned_at = NULL, "
                "error = CASE WHEN stage IN ('xmp', 'exif') THEN NULL ELSE error END, "
                "stage = CASE WHEN stage IN ('xmp', 'exif') THEN NULL ELSE stage END "
                "WHERE path = ?",
                [(p,) for p in paths],
            )

    @_sqlite_errors
    def prune(
        self,
        under: Iterable[str | os.PathLike[str]] | None = None,
        dry_run: bool = False,
        missing_folders: bool = False,
    ) -> Pruned:
        """Delete rows whose file no longer exists (optionally only below the ``under`` folders).

        A row whose folder is gone too is kept unless ``missing_folders``: a drive that is not
        mounted (a NAS, a card) looks like that, and pruning would drop every caption on it."""
        prefixes = [os.path.abspath(os.fspath(p)) for p in under or []]
        gone: list[str] = []
        kept: list[str] = []
        folders: dict[str, bool] = {}  # folder -> it exists
        for path in self.iter_paths():
            if prefixes and not any(
                path == p or path.startswith(p.rstrip(os.sep) + os.sep) for p in prefixes
            ):
                continue
            if not os.path.lexists(path):
                folder = os.path.dirname(path)
                if folder not in folders:
                    folders[folder] = os.path.isdir(folder)
                (gone if folders[folder] or missing_folders else kept).append(path)
        if gone and not dry_run:
            with self.transaction():
                self.db.conn.executemany("DELETE FROM photos WHERE path = ?", [(p,) for p in gone])
        return Pruned(gone, kept)


@dataclass(frozen=True)
class Pruned:
    """What :meth:`PhotoIndex.prune` removed (or would), and the rows it kept because their
    folder is missing too."""

    removed: list[str]
    folder_missing: list[str]


class RunRecord:
    """A caption run's record in the :class:`PhotoIndex`: its captions, its failures, and the
    facts of each photo. The ``index`` output of ``--write``, but not a writer of files: every
    run keeps it (without ``--write index`` its rows only let the next run skip the photos).

    Rows are buffered and written in one transaction per :meth:`flush` (the pipeline flushes once
    per batch), so the index is committed batch by batch. :meth:`note_photo` adds the photo's
    facts (size, hash, EXIF...; a :class:`PhotoFacts`) that a :class:`CaptionRecord` does not
    carry.
    """

    name = "index"

    def __init__(self, index: PhotoIndex, options: WriteOptions | None = None) -> None:
        self.index = index
        self.options = options or WriteOptions()
        self._facts: dict[str, dict[str, Any]] = {}
        self._pending: list[dict[str, Any]] = []
        self._moves: list[tuple[str, str]] = []
        self._clears: list[tuple[str, tuple[str, ...], frozenset[str]]] = []
        self._vectors: dict[str, bytes | None] = {}  # path -> vector (None: none any more)

    def note_photo(self, path: str | os.PathLike[str], facts: PhotoFacts) -> None:
        """Facts about a photo to store with its next record (size, mtime_ns, content_hash, ...)."""
        self._facts.setdefault(os.fspath(path), {}).update(facts.given())

    def note_move(self, old_path: str, new_path: str) -> None:
        """The photo at ``new_path`` is the row at ``old_path`` moved; applied before the rows."""
        self._moves.append((old_path, new_path))

    def write(
        self, record: CaptionRecord, *, error: str | None = None, stage: str | None = None
    ) -> WriteOutcome:
        """Buffer ``record``'s row. ``error`` and ``stage``: an output of this caption failed
        (see :data:`FailureStage`); the caption is kept, the failure recorded with it. Without
        them, a failure recorded earlier is cleared."""
        if self.options.dry_run:
            return WriteOutcome(
                self.name, record.path, "skipped", "dry run", code=OutcomeCode.DRY_RUN
            )
        key = os.fspath(record.path)
        row = {
            "path": key,
            "caption": record.caption,
            "score": record.score,
            "alternatives": json.dumps(list(record.alternatives), ensure_ascii=False),
            "model_id": record.model_id,
            "captioned_at": record.captioned_at.astimezone(timezone.utc).isoformat(
                timespec="seconds"
            ),
            "error": error,
            "stage": stage if error is not None else None,
            "updated_at": _utcnow(),
        }
        if record.vector != KEEP_VECTOR:  # a carried caption keeps its row's vector
            self._vectors[key] = record.vector
        row.update(self._facts.pop(key, {}))
        self._pending.append(row)
        return WriteOutcome(self.name, record.path, "written")

    def write_failure(
        self, path: str | os.PathLike[str], error: str, stage: FailureStage = "decode"
    ) -> None:
        """Record that a photo failed before it had a caption (``stage``: discover, decode or
        model): caption cleared, reason in ``error``."""
        if self.options.dry_run:
            return
        key = index_key(path)
        row: dict[str, Any] = {
            "path": key, "caption": None, "score": None, "alternatives": None,
            "model_id": None, "captioned_at": None, "outputs": None, "error": error,
            "stage": stage, "updated_at": _utcnow(),
        }  # fmt: skip
        row.update(self._facts.pop(os.fspath(path), {}))
        self._pending.append(row)

    def clear_failures(
        self, stage: FailureStage, under: Iterable[str | os.PathLike[str]], keep: Iterable[str]
    ) -> None:
        """Forget, with the next flush, the ``stage`` failures recorded at or below the
        ``under`` paths except those at ``keep`` (index keys): they were not met again."""
        if self.options.dry_run:
            return
        roots = tuple(index_key(os.path.abspath(os.fspath(p))) for p in under)
        if roots:
            self._clears.append((stage, roots, frozenset(keep)))

    def flush(self) -> None:
        """Write everything buffered in one transaction."""
        if not (self._pending or self._moves or self._clears):
            return
        rows, moves, clears = self._pending, self._moves, self._clears
        vectors, self._vectors = self._vectors, {}
        self._pending, self._moves, self._clears = [], [], []
        try:
            with self.index.transaction():
                for stage, roots, keep in clears:
                    self.index.forget_failures(stage, roots, keep)
                for old, new in moves:
                    self.index.move_photo(old, new)
                self.index.upsert_photos(rows)
                self.index.set_vectors(vectors)
        except sqlite3.Error as err:
            raise index_error(self.index.path, err, "write to") from None

    def close(self) -> None:
        self.flush()


def _not_there(db_path: Path) -> list[Path]:
    """The files (the index, its -journal, -wal, -shm and lock files) and the folders above it
    that do not exist yet, files first and deeper folders before their parents: what opening
    ``db_path`` may create."""
    if db_path.exists() or db_path.is_symlink():
        # An index that exists may be open in another process right now (a cron run), whose
        # -wal and -shm come and go with it: none of them is ours to remove.
        return []
    names = ("", "-journal", "-wal", "-shm", ".lock")
    files = [db_path.with_name(db_path.name + suffix) for suffix in names]
    folders = [folder for folder in db_path.parents if not folder.exists()]
    return [p for p in files if not (p.exists() or p.is_symlink())] + folders


def _remove(paths: list[Path]) -> None:
    """Remove ``paths`` (files, then empty folders), as far as they exist."""
    for p in paths:
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                p.rmdir()  # only when empty
            else:
                p.unlink()


def _non_empty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _writable(path: Path) -> bool:
    """Whether photocap may write the index at ``path``: the file and its folder (WAL's -shm and
    -wal files live beside it)."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


# Search by meaning (PhotoIndex.search's ``meaning``): how many of a tier's best matches by bm25
# are ranked again by their vectors, the reciprocal-rank constant of the fusion and the text
# order's weight in it. Chosen on dev among K 3/10/60/inf x weight 0/0.5/1
# (benchmarks/README.md "Search by meaning"): K 10, weight 0.5 gave the best sentence recall.
MEANING_POOL = 500
FUSION_K = 10
TEXT_WEIGHT = 0.5  # the bm25 order's weight in the fusion (the order by meaning's is 1)


def fuse_ranks(bm25: dict[int, float], vectors: dict[int, bytes], query: Any) -> dict[int, float]:
    """Row id -> minus the fused score (lower is better, as bm25): reciprocal-rank fusion of
    the bm25 order and the order by cosine with ``query`` (unit, float32). A row without a
    vector is given its bm25 rank in both, so it keeps its place among the others."""
    import numpy as np

    from photocap.embedding import vector_from_bytes

    by_text = sorted(bm25, key=lambda i: (bm25[i], i))
    text_rank = {row: k for k, row in enumerate(by_text)}
    with_vector = [row for row in by_text if row in vectors]
    meaning_rank = dict(text_rank)
    if with_vector:
        matrix = np.stack([vector_from_bytes(vectors[row]) for row in with_vector])  # (M, dim)
        cosine = matrix @ np.asarray(query, dtype=np.float32)  # (M,)
        # The rows with a vector take the text ranks they hold among themselves, reordered.
        slots = sorted(text_rank[row] for row in with_vector)
        order = [with_vector[k] for k in np.argsort(-cosine, kind="stable")]
        meaning_rank |= dict(zip(order, slots, strict=True))
    text = {row: TEXT_WEIGHT / (FUSION_K + k) for row, k in text_rank.items()}
    return {row: -(text[row] + 1 / (FUSION_K + meaning_rank[row])) for row in bm25}


def build_fts_query(query: str) -> str:
    """User text -> the safe FTS5 query matching all of it (:func:`photocap.query.parse_query`);
    "" when there is nothing to search for."""
    from photocap.query import parse_query

    return parse_query(query).all_of()


def place_of(path: str) -> str:
    """What search knows of where a photo is: its folder's name and its file's stem."""
    folder, name = os.path.split(path)
    return f"{os.path.basename(folder)} {os.path.splitext(name)[0]}".strip()


def index_key(path: str | os.PathLike[str]) -> str:
    """The ``path`` column value for ``path``: the path itself, or for a name that is not
    UTF-8 (which SQLite text cannot hold) the path with those bytes written as ``\\xNN``."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


def mtime_iso(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc).isoformat(timespec="seconds")


_ROW_SQL = (
    "path, caption, score, alternatives, model_id, captioned_at, outputs, size, mtime_ns, "
    "content_hash, error, sidecar_stamp, pixels_hash, stage"
)


def _to_row(r: Sequence[Any]) -> PhotoRow:
    try:
        alternatives = tuple(json.loads(r[3])) if r[3] else ()
    except (ValueError, TypeError):
        alternatives = ()
    return PhotoRow(
        path=r[0], caption=r[1], score=r[2], alternatives=alternatives, model_id=r[4],
        captioned_at=r[5], outputs=frozenset(x for x in (r[6] or "").split(",") if x),
        size=r[7], mtime_ns=r[8], content_hash=r[9], error=r[10], sidecar_stamp=r[11],
        pixels_hash=r[12], stage=r[13],
    )  # fmt: skip


def _segments(highlighted: str | None) -> tuple[tuple[str, bool], ...]:
    """Split FTS highlight() output (matches wrapped in \\x02 ... \\x03) into segments."""
    out: list[tuple[str, bool]] = []
    for i, chunk in enumerate((highlighted or "").split("\x02")):
        if i == 0:
            if chunk:
                out.append((chunk, False))
            continue
        hit, _, rest = chunk.partition("\x03")
        out.append((hit, True))
        if rest:
            out.append((rest, False))
    return tuple(out)


def _sql_value(value: Any) -> Any:
    if isinstance(value, (frozenset, set, list, tuple)):
        return (
            ",".join(sorted(value))
            if isinstance(value, (set, frozenset))
            else json.dumps(list(value))
        )
    if isinstance(value, Path):
        return os.fspath(value)
    return value


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _file_lock(db_path: Path) -> Iterator[None]:
    """An exclusive lock next to the database, held while migrating (POSIX; no-op elsewhere).

    Not on the database file itself: closing any descriptor of it would drop SQLite's own locks.
    """
    if os.fspath(db_path) == ":memory:":
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: migrations are idempotent enough
        yield
        return
    with open(os.fspath(db_path) + ".lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
