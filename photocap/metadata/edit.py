"""What a photo file holds where a caption can be, and the change a rewrite makes to it.

:class:`InFileText` is what a format module reads from a file (its EXIF TIFF block, its XMP
packet, its IPTC caption); :class:`FileEdit` is what the exif writer's plan (and revert) asks a
format module to change: IFD0 tags, and x-default texts of the embedded XMP. Format modules
take and return these; they know nothing of writers or provenance.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

from photocap.errors import WriteError
from photocap.metadata.ifd import (
    TAG_IMAGE_DESCRIPTION,
    TAG_XP_COMMENT,
    decode_ascii,
    decode_xp,
    read_tag,
)
from photocap.metadata.xmp import XmpDocument, parse_packet


@dataclass
class InFileText:
    """What a photo file holds where a caption can be: the input of a rewrite's plan (JPEG,
    WebP, TIFF, PNG), and of the look for a person's caption (those, RAWs and
    :data:`photocap.metadata.infile.PILLOW_TEXT_FORMATS`)."""

    format: str  # "JPEG", "WebP", "TIFF", "PNG", "DNG", "RAW" or one of PILLOW_TEXT_FORMATS
    tiff: bytes | None  # the EXIF TIFF block
    packet: bytes | None  # the embedded XMP packet (JPEG APP1, WebP "XMP ", PNG iTXt, ...)
    iptc_caption: str | None  # IPTC Caption-Abstract (JPEG, TIFF and TIFF-based RAW)
    iptc_keywords: tuple[str, ...] = ()  # IPTC Keywords (the same formats)

    @property
    def description(self) -> str | None:
        """EXIF ImageDescription."""
        return decode_ascii(read_tag(self.tiff, TAG_IMAGE_DESCRIPTION))

    @property
    def comment(self) -> str | None:
        """EXIF XPComment."""
        return decode_xp(read_tag(self.tiff, TAG_XP_COMMENT))

    def keywords(self) -> list[str]:
        """The keywords people gave the photo inside the file: the embedded XMP's (see
        :meth:`XmpDocument.keywords`), then IPTC's; each once. A malformed packet counts as
        holding none."""
        try:
            packet = self.xmp()
        except WriteError:
            packet = None
        words = (packet.keywords() if packet is not None else []) + list(self.iptc_keywords)
        return list(dict.fromkeys(words))

    def xmp(self) -> XmpDocument | None:
        """The embedded packet, parsed; a malformed one raises :class:`WriteError`."""
        return None if self.packet is None else parse_packet(self.packet)


@dataclass
class FileEdit:
    """The changes a rewrite makes: IFD0 tags, and x-default texts of the embedded XMP."""

    tags: dict[int, tuple[int, bytes] | None] = field(default_factory=dict)  # None removes
    xmp: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (ns, name) -> text
    drop_empty_xmp: bool = False  # a packet left empty goes (a revert of one photocap added)

    def __bool__(self) -> bool:
        return bool(self.tags or self.xmp)


def verify_same_frames(old: bytes, new: bytes, kind: str) -> None:
    """Raise WriteError unless both files decode to the same frames (an animated WebP's, a
    TIFF's pages): size, mode and pixels, compared one frame at a time (memory)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # A bomb warning, or Pillow's complaint about a damaged tag that both files keep as
            # it is ("Truncated File Read"): the frames are what is judged here, not printed.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(old)) as a, Image.open(io.BytesIO(new)) as b:
                frames = getattr(a, "n_frames", 1)
                same = frames == getattr(b, "n_frames", 1)
                for i in range(frames if same else 0):
                    a.seek(i)
                    b.seek(i)
                    if (a.size, a.mode) != (b.size, b.mode) or a.tobytes() != b.tobytes():
                        same = False
                        break
    except Exception as err:  # any decoder error means we must not install this file
        raise WriteError(f"verification failed: {kind} does not decode ({err})") from None
    if not same:
        raise WriteError("verification failed: pixels changed")
