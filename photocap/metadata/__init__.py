"""Captions where photo software reads them: XMP sidecars and the photo file itself.

A map for newcomers (each file says more in its docstring):

Where a caption goes, by file format (parse, read texts, rebuild, verify)
    :mod:`~photocap.metadata.jpeg`, :mod:`~photocap.metadata.png`,
    :mod:`~photocap.metadata.webp`, :mod:`~photocap.metadata.tiff` (TIFF and DNG). Adding
    in-file captions for a new format is one more module like these, listed in
    :data:`photocap.metadata.infile.FORMATS`.
The structures they share
    :mod:`~photocap.metadata.ifd` (the TIFF structure of every EXIF block and TIFF file),
    :mod:`~photocap.metadata.xmp` (the XMP document: parse, edit, serialise),
    :mod:`~photocap.metadata.iptc` (IPTC captions, read only),
    :mod:`~photocap.metadata.edit` (what a file holds, and the change a rewrite makes).
A file as a whole
    :mod:`~photocap.metadata.infile`: which module handles a file, reading its texts, and
    rewriting it safely (atomic, verified, no dead bytes left).
Sidecars and records
    :mod:`~photocap.metadata.sidecars` (naming, finding, stamps, adoption),
    :mod:`~photocap.metadata.provenance` (what photocap wrote and replaced, and the way back
    to the exact original file; :mod:`~photocap.metadata.patch` holds that byte patch).
The rules
    :mod:`~photocap.metadata.authorship`: the one rule for "did a person write this
    caption?", and alt text.
The writers and undo
    :mod:`~photocap.metadata.sidecar_writer` (``--write xmp``),
    :mod:`~photocap.metadata.exif_writer` (``--write exif``), built by name with
    :func:`get_writers`; :mod:`~photocap.metadata.revert` (``photocap revert``).

Data flows one way: format modules know no writer, the writers know no index, and nothing
here imports :mod:`photocap.pipeline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from photocap.writers import WriteOptions, Writer, WriterFactory


def get_writers(names: Sequence[str], options: WriteOptions) -> list[Writer]:
    """The file writers named (``"xmp"``, ``"exif"``), built with ``options``; the writers'
    modules are imported here, not before (``photocap --help`` stays instant)."""
    from photocap.metadata.exif_writer import ExifWriter
    from photocap.metadata.sidecar_writer import XmpWriter

    writers: dict[str, WriterFactory] = {"xmp": XmpWriter, "exif": ExifWriter}
    return [writers[name](options) for name in names]
