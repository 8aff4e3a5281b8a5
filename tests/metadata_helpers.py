"""Test helpers for the metadata writers: real JPEGs with camera EXIF, and external tools."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import piexif
from PIL import Image, ImageCms

from photocap.writers import CaptionRecord

EXIFTOOL = shutil.which("exiftool")
EXIV2 = shutil.which("exiv2")

XMP_PACKET = (
    b"http://ns.adobe.com/xap/1.0/\x00"
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4"/>'
    b'</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


def record(
    path: Path, caption: str = "A dog runs through the grass.", **kw: object
) -> CaptionRecord:
    fields: dict[str, object] = {
        "path": path,
        "caption": caption,
        "score": -1.25,
        "alternatives": ("A dog in the grass.",),
        "model_id": "photocap-test-1",
        "captioned_at": datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc),
    }
    fields.update(kw)
    return CaptionRecord(**fields)  # type: ignore[arg-type]


def camera_exif(description: str | None = None) -> bytes:
    """EXIF as a camera writes it: Make/Model, GPS, a maker note and a JPEG thumbnail."""
    thumb = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(thumb, "JPEG", quality=80)
    zeroth: dict[int, object] = {
        piexif.ImageIFD.Make: b"TestCam",
        piexif.ImageIFD.Model: b"TC-1",
        piexif.ImageIFD.Orientation: 1,
        piexif.ImageIFD.XResolution: (72, 1),
        piexif.ImageIFD.YResolution: (72, 1),
        piexif.ImageIFD.ResolutionUnit: 2,
    }
    if description is not None:
        zeroth[piexif.ImageIFD.ImageDescription] = description.encode()
    exif_ifd = {
        piexif.ExifIFD.DateTimeOriginal: b"2023:07:14 10:20:30",
        piexif.ExifIFD.ExposureTime: (1, 250),
        piexif.ExifIFD.FNumber: (28, 10),
        piexif.ExifIFD.MakerNote: b"CAMERA-MAKERNOTE\x00\x01\x02\x03" * 4,
    }
    gps = {
        piexif.GPSIFD.GPSLatitudeRef: b"N",
        piexif.GPSIFD.GPSLatitude: ((52, 1), (31, 1), (1200, 100)),
        piexif.GPSIFD.GPSLongitudeRef: b"E",
        piexif.GPSIFD.GPSLongitude: ((13, 1), (24, 1), (3000, 100)),
    }
    first = {
        piexif.ImageIFD.XResolution: (72, 1),
        piexif.ImageIFD.YResolution: (72, 1),
        piexif.ImageIFD.ResolutionUnit: 2,
    }
    return bytes(
        piexif.dump(
            {
                "0th": zeroth,
                "Exif": exif_ifd,
                "GPS": gps,
                "1st": first,
                "thumbnail": thumb.getvalue(),
            }
        )
    )


def xmp_packet(description: str | None = None, extra: str = "") -> bytes:
    """An XMP packet as cameras and photo tools embed it, with a rating and a description."""
    desc = (
        ""
        if description is None
        else "<dc:description><rdf:Alt><rdf:li xml:lang='x-default'>"
        f"{description}</rdf:li></rdf:Alt></dc:description>"
    )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:Rating="4">'
        f"{desc}{extra}</rdf:Description></rdf:RDF></x:xmpmeta>"
        + " " * 200  # the padding writers leave for in-place edits
        + '<?xpacket end="w"?>'
    ).encode()


def app_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def xmp_segment(packet: bytes) -> bytes:
    return app_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + packet)


def iptc_record(caption: bytes) -> bytes:
    """An IPTC-IIM record with a Caption-Abstract (2:120)."""
    record = b"\x1c\x02\x00\x00\x02\x00\x04"  # RecordVersion 4
    return record + b"\x1c\x02\x78" + struct.pack(">H", len(caption)) + caption


def photoshop_resources(caption: bytes) -> bytes:
    """A Photoshop image resource block whose IPTC resource (0x0404) has that caption."""
    record = iptc_record(caption)
    resource = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(record)) + record
    return resource + b"\x00" * (len(record) & 1)


def iptc_segment(caption: bytes) -> bytes:
    """A Photoshop APP13 segment holding an IPTC record with a Caption-Abstract (2:120)."""
    return app_segment(0xED, b"Photoshop 3.0\x00" + photoshop_resources(caption))


def insert_after_app(data: bytes, blob: bytes) -> bytes:
    """``blob`` inserted after the JPEG's last leading APPn segment."""
    at = 2
    for seg in segments(data)[:-1]:
        if not 0xE0 <= seg[1] <= 0xEF:
            break
        at += len(seg)
    return data[:at] + blob + data[at:]


def make_jpeg(
    path: Path, *, exif: bytes | None = None, icc: bool = False, extras: bool = False
) -> Path:
    """A real JPEG with a gradient; ``extras`` adds an XMP APP1 and a COM segment."""
    img = Image.new("RGB", (64, 48))
    img.putdata([(x * 4, y * 5, (x + y) % 256) for y in range(48) for x in range(64)])
    kw: dict[str, object] = {"quality": 90}
    if exif is not None:
        kw["exif"] = exif
    if icc:
        kw["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)  # type: ignore[arg-type]
    data = buf.getvalue()
    if extras:
        xmp = b"\xff\xe1" + struct.pack(">H", len(XMP_PACKET) + 2) + XMP_PACKET
        com_text = b"made by a test"
        com = b"\xff\xfe" + struct.pack(">H", len(com_text) + 2) + com_text
        # after the last APPn segment (SOI, APP0, Exif APP1, ICC APP2 come first)
        data = insert_after_app(data, xmp + com)
    path.write_bytes(data)
    return path


def segments(data: bytes) -> list[bytes]:
    """All marker segments up to SOS, each as raw bytes (independent of photocap's parser)."""
    assert data[:2] == b"\xff\xd8"
    pos, out = 2, []
    while data[pos + 1] != 0xDA:
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        out.append(data[pos : pos + 2 + length])
        pos += 2 + length
    out.append(data[pos:])  # SOS + scan + EOI
    return out


def is_exif(seg: bytes) -> bool:
    return seg[:2] == b"\xff\xe1" and seg[4:10] == b"Exif\x00\x00"


def is_xmp(seg: bytes) -> bool:
    """The standard XMP APP1 segment (not an Extended XMP part)."""
    return seg[:2] == b"\xff\xe1" and seg[4:33] == b"http://ns.adobe.com/xap/1.0/\x00"


def is_caption_segment(seg: bytes) -> bool:
    """A segment ``--write exif`` may change: the Exif block or the XMP packet."""
    return is_exif(seg) or is_xmp(seg)


def pixels(path: Path) -> bytes:
    with Image.open(path) as img:
        return img.tobytes()


def exiftool_json(path: Path, *tags: str) -> dict[str, object]:
    assert EXIFTOOL
    out = subprocess.run(
        [EXIFTOOL, "-j", "-charset", "exif=utf8", *tags, str(path)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    result: dict[str, object] = json.loads(out)[0]
    return result


def exiftool_warnings(path: Path) -> set[str]:
    """``exiftool -validate -warning -a`` lines, without the values that always differ."""
    assert EXIFTOOL
    out = subprocess.run(
        [EXIFTOOL, "-validate", "-warning", "-a", "-s", str(path)],
        capture_output=True,
        text=True,
    ).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def exiv2(path: Path, flag: str) -> str:
    assert EXIV2
    proc = subprocess.run([EXIV2, flag, str(path)], capture_output=True, text=True)
    return proc.stdout
