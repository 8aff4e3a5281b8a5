"""Small error classes. The library raises these; only the CLI turns them into messages."""

from __future__ import annotations


class PhotocapError(Exception):
    """Base class of every error photocap raises on purpose. ``str(err)`` is one clear line."""


class ImageError(PhotocapError):
    """A photo could not be read or decoded (truncated, not an image, too large, ...)."""


class ModelError(PhotocapError):
    """A model file is missing, corrupt, of an unknown format version, or unsafe."""


class DatasetError(PhotocapError):
    """A training/evaluation data folder is missing, incomplete or of an unknown layout."""


class WriteError(PhotocapError):
    """A caption could not be written (read-only file, failed verification, ...)."""


class MetadataError(WriteError):
    """A photo's or a sidecar's metadata cannot be read: damaged, unsafe or too large. Raised by
    the parsers, which only read; a WriteError too, as what cannot be read is not written."""


class SidecarTaken(WriteError):
    """The stem-named sidecar belongs to another photo (the RAW of a RAW+JPEG pair)."""


class IndexDbError(PhotocapError):
    """The SQLite index could not be opened or migrated."""


class QueryError(PhotocapError):
    """A search query or one of its filters is malformed (e.g. a date that is not a date)."""


class FolderNotWritable(WriteError):
    """The folder cannot take a new file: read-only media, a share, permissions."""


def one_line(err: BaseException, limit: int | None = None) -> str:
    """``err`` as one line (whitespace folded; its type's name when it says nothing), cut to
    ``limit`` characters: how every per-file failure is reported."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if limit is None else text[:limit]
