"""XMP sidecars: write captions where photo software reads them, merging, never clobbering.

Where the caption goes (``photo.jpg.xmp`` by default, ``photo.xmp`` with ``--sidecar-name stem``):

* ``dc:description`` - an ``rdf:Alt`` whose ``x-default`` entry (first) is the caption; other
  languages a person wrote (``de-DE``, ...) are kept untouched. Read by Lightroom, digiKam,
  darktable, Immich, exiftool, exiv2.
* ``Iptc4xmpCore:AltTextAccessibility`` - IPTC 2021.1 alt text (lang-alt, <= 250 characters).
* ``photocap:*`` (``https://github.com/photocap/ns/1.0/``) - provenance: model, score, date, the
  exact texts photocap wrote and the values they replaced. It is how a later run knows which
  captions are photocap's own (updated on re-caption) and which a person wrote (kept), and how
  ``photocap revert`` restores the earlier values.

An existing sidecar is parsed with defusedxml (no entity expansion, no external entities, size
cap) and modified as a tree: every other field, namespace, language, attribute and structure
(ratings, keywords, darktable history, Lightroom ``crs:`` settings, unknown namespaces) is
written back unchanged. Writes go through :func:`photocap.safeio.atomic_write` after the new
document has been re-parsed and checked.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from photocap.errors import SidecarTaken, WriteError
from photocap.image import IMAGE_EXTENSIONS, RAW_EXTENSIONS
from photocap.safeio import (
    atomic_delete,
    atomic_write,
    check_writable,
    describe_os_error,
    fsync_dir,
    read_capped,
)
from photocap.writers import (
    CaptionRecord,
    WriteOptions,
    WriteOutcome,
    WriteStatus,
    is_blank_description,
    register_writer,
)

NS_X = "adobe:ns:meta/"
NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_DC = "http://purl.org/dc/elements/1.1/"
NS_IPTC = "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/"
NS_PHOTOCAP = "https://github.com/photocap/ns/1.0/"

# Conventional prefixes, used when serialising; a sidecar's own prefixes win for other URIs.
KNOWN_PREFIXES: dict[str, str] = {
    NS_X: "x",
    NS_RDF: "rdf",
    NS_DC: "dc",
    "http://ns.adobe.com/xap/1.0/": "xmp",
    NS_IPTC: "Iptc4xmpCore",
    "http://darktable.sf.net/": "darktable",
    "http://ns.adobe.com/camera-raw-settings/1.0/": "crs",
    "http://ns.adobe.com/photoshop/1.0/": "photoshop",
    "http://ns.adobe.com/lightroom/1.0/": "lr",
    "http://www.digikam.org/ns/1.0/": "digiKam",
    "http://ns.adobe.com/exif/1.0/": "exif",
    "http://ns.adobe.com/tiff/1.0/": "tiff",
    "http://ns.adobe.com/xap/1.0/mm/": "xmpMM",
    NS_PHOTOCAP: "photocap",
}

MAX_SIDECAR_BYTES = 10 * 1024 * 1024  # real sidecars are KBs; darktable histories < 1 MB
MAX_ALT_TEXT = 250  # IPTC recommendation for AltTextAccessibility

# File extensions of photos that could share a stem-named sidecar (x.jpg + x.png -> x.xmp; a
# RAW+JPEG pair x.cr2 + x.jpg -> x.xmp).
PHOTO_EXTENSIONS = IMAGE_EXTENSIONS | RAW_EXTENSIONS | {".jxl"}

SidecarName = Literal["full", "stem"]


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


RDF_RDF = _q(NS_RDF, "RDF")
RDF_DESCRIPTION = _q(NS_RDF, "Description")
RDF_ALT = _q(NS_RDF, "Alt")
RDF_LI = _q(NS_RDF, "li")
RDF_ABOUT = _q(NS_RDF, "about")
XML_LANG = _q(NS_XML, "lang")


# --------------------------------------------------------------------------- sidecar naming


def sidecar_path(photo: Path, naming: SidecarName = "full") -> Path:
    """``photo.jpg`` -> ``photo.jpg.xmp`` (``full``) or ``photo.xmp`` (``stem``, Lightroom).

    An existing sidecar whose extension is in capitals (``photo.JPG.XMP``, as some cameras and
    Windows tools name it) is the photo's sidecar on a case-sensitive file system too: it is
    merged into, and a person's caption in it is kept, instead of a second sidecar appearing.
    """
    base = photo.with_suffix("") if naming == "stem" else photo
    lower = base.with_name(base.name + ".xmp")
    if not (lower.exists() or lower.is_symlink()):
        upper = base.with_name(base.name + ".XMP")
        if upper.exists() or upper.is_symlink():
            return upper
    return lower


def stem_siblings(photo: Path) -> list[Path]:
    """Other photos in the folder that a stem-named sidecar would also belong to.

    Probes the few candidate names (``x.png``, ``x.JPG``, ...) instead of listing the folder:
    listing it for every photo made a run over one big folder quadratic in its size.
    """
    if photo.name.startswith("."):
        return []
    found: set[Path] = set()
    for ext in PHOTO_EXTENSIONS:
        for variant in {ext, ext.upper()}:
            candidate = photo.with_name(photo.stem + variant)
            if candidate.name == photo.name:
                continue
            try:
                if candidate.is_file() and not os.path.samefile(candidate, photo):
                    found.add(candidate)  # samefile: case-insensitive file systems
            except OSError:
                continue
    return sorted(found)


def photos_for_sidecar(sidecar: Path) -> list[Path]:
    """The photo(s) a sidecar belongs to: ``x.jpg.xmp`` -> x.jpg; ``x.xmp`` -> x.* photos."""
    inner = Path(sidecar.stem)  # "x.jpg" for x.jpg.xmp, "x" for x.xmp
    if inner.suffix.lower() in PHOTO_EXTENSIONS:
        return [sidecar.with_name(inner.name)]
    try:
        entries = list(sidecar.parent.iterdir())
    except OSError:
        return []
    return sorted(
        p
        for p in entries
        if p.stem == sidecar.stem and p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file()
    )


def stem_owner(photos: list[Path]) -> Path | None:
    """Which of the photos sharing a stem owns the stem-named sidecar: the RAW of a RAW+JPEG
    pair (Lightroom's convention: ``IMG_0001.xmp`` describes ``IMG_0001.CR2``); None when
    that is ambiguous (no RAW, or several)."""
    raws = [p for p in photos if p.suffix.lower() in RAW_EXTENSIONS]
    return raws[0] if len(raws) == 1 else None


def find_sidecars(photo: Path) -> list[Path]:
    """Existing sidecars of ``photo``, both naming forms, full form first.

    The stem form is only counted when no other photo shares the stem (it would be ambiguous),
    or when ``photo`` is the RAW of a RAW+JPEG pair (:func:`stem_owner`).
    """
    found = [sidecar_path(photo, "full")]
    stem = sidecar_path(photo, "stem")
    if stem.exists() or stem.is_symlink():  # cheap check first
        others = stem_siblings(photo)
        if not others or stem_owner([photo, *others]) == photo:
            found.append(stem)
    return [p for p in found if p.exists() or p.is_symlink()]


def sidecar_stamp(photo: Path) -> str:
    """A fingerprint of the sidecars ``photo`` may have: the name, size and mtime of each one
    that exists (either naming form, either case); ``""`` when there are none.

    The index keeps it, so a re-run that skips an unchanged photo still notices that another
    app wrote in its sidecar (a caption a person typed in digiKam), or that it was deleted,
    from two to four ``stat`` calls and without parsing anything. The names are those
    :func:`sidecar_path` picks (the capitalised one only when the other is missing). A
    stem-named sidecar counts even when it belongs to the RAW of a pair: noticing too much
    costs one look, too little a stale index.
    """
    # Plain strings, not Path: this runs for every photo of an unchanged re-run.
    folder, name = os.path.split(os.fspath(photo))
    parts = []
    for base in dict.fromkeys((name, os.path.splitext(name)[0])):  # one if there is no suffix
        for ext in (".xmp", ".XMP"):
            try:
                st = os.stat(os.path.join(folder, base + ext))  # a symlink: its target's
            except (OSError, ValueError):
                continue
            parts.append(f"{base}{ext}:{st.st_size}:{st.st_mtime_ns}")
            break  # as in sidecar_path: photo.jpg.xmp hides photo.jpg.XMP
    return "/".join(parts)  # "/" never occurs in a file name


# --------------------------------------------------------------------------- the document


class XmpDocument:
    """An XMP packet as an ElementTree, with the few RDF operations photocap needs.

    Properties may be in attribute form (``<rdf:Description xmp:Rating="5">``) or element form
    (``<xmp:Rating>5</xmp:Rating>``), in any of several ``rdf:Description`` elements; every
    method handles both. Namespace prefixes seen while parsing are kept for serialisation.
    """

    def __init__(
        self,
        root: ET.Element,
        prefixes: dict[str, str] | None = None,
        before: list[ET.Element] | None = None,
        after: list[ET.Element] | None = None,
    ) -> None:
        self.root = root
        self.prefixes: dict[str, str] = dict(prefixes or {})  # uri -> prefix from the source
        # Comments and processing instructions outside the root element (before it, after
        # it), kept for serialisation; the xpacket wrapper is not among them (it is rewritten).
        self.before: list[ET.Element] = list(before or [])
        self.after: list[ET.Element] = list(after or [])
        if root.tag == RDF_RDF:
            self.rdf = root
        elif root.tag == _q(NS_X, "xmpmeta") or root.tag == _q(NS_X, "xapmeta"):
            rdf = root.find(RDF_RDF)
            if rdf is None:
                rdf = ET.SubElement(root, RDF_RDF)
            self.rdf = rdf
        else:
            raise WriteError(f"not an XMP sidecar (root element {_local(root.tag)!r})")

    # ---- construction / parsing

    @classmethod
    def new(cls) -> XmpDocument:
        root = ET.Element(_q(NS_X, "xmpmeta"), {_q(NS_X, "xmptk"): "photocap"})
        rdf = ET.SubElement(root, RDF_RDF)
        ET.SubElement(rdf, RDF_DESCRIPTION, {RDF_ABOUT: ""})
        return cls(root)

    @classmethod
    def parse(cls, data: bytes, source: str = "sidecar") -> XmpDocument:
        """Parse safely: defusedxml forbids entity declarations and external references."""
        prefixes: dict[str, str] = {}
        root: ET.Element | None = None
        before: list[ET.Element] = []  # top-level comments and PIs before the root element
        after: list[ET.Element] = []  # ... and after it
        depth = 0
        # Comments and processing instructions inside the packet are kept (a merge must not
        # drop what a person or another tool wrote); the defused parser still refuses
        # entities and external references.
        parser = DET.DefusedXMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
        try:
            for event, item in DET.iterparse(
                io.BytesIO(data),
                events=("start-ns", "start", "end", "comment", "pi"),
                parser=parser,
            ):
                if event == "start-ns":
                    prefix, uri = item
                    if prefix and uri not in prefixes:
                        prefixes[uri] = prefix
                elif event == "start":
                    depth += 1
                elif event == "end":
                    depth -= 1
                    root = item
                elif depth == 0 and not (
                    item.tag is ET.ProcessingInstruction and (item.text or "").startswith("xpacket")
                ):
                    # top level: TreeBuilder attaches these to no element, so keep them here
                    (before if root is None else after).append(item)
        except DefusedXmlException as err:
            raise WriteError(f"unsafe XML refused ({type(err).__name__}) in {source}") from None
        except ET.ParseError as err:
            raise WriteError(f"malformed XML in {source}: {err}") from None
        if root is None:
            raise WriteError(f"empty XML document: {source}")
        return cls(root, prefixes, before, after)

    @classmethod
    def load(cls, path: Path) -> XmpDocument:
        """Read and parse an existing sidecar (size-capped, folders refused)."""
        return cls.parse(read_capped(path, MAX_SIDECAR_BYTES, "sidecar"), str(path))

    # ---- lookup

    def descriptions(self) -> list[ET.Element]:
        return self.rdf.findall(RDF_DESCRIPTION)

    def _main_description(self) -> ET.Element:
        descs = self.descriptions()
        if descs:
            return descs[0]
        return ET.SubElement(self.rdf, RDF_DESCRIPTION, {RDF_ABOUT: ""})

    def _find(self, ns: str, name: str) -> Iterator[tuple[ET.Element, ET.Element | None]]:
        """Yield (description, element) for element form, (description, None) for attributes."""
        key = _q(ns, name)
        for desc in self.descriptions():
            if key in desc.attrib:
                yield desc, None
            for child in desc.findall(key):
                yield desc, child

    def has_namespace(self, ns: str) -> bool:
        prefix = f"{{{ns}}}"
        for desc in self.descriptions():
            if any(k.startswith(prefix) for k in desc.attrib):
                return True
            if any(_is_element(c) and c.tag.startswith(prefix) for c in desc):
                return True
        return False

    def get_text(self, ns: str, name: str) -> str | None:
        """A simple (text) property, or None when absent."""
        key = _q(ns, name)
        for desc, elem in self._find(ns, name):
            if elem is None:
                return desc.attrib[key]
            if len(elem) == 0:
                return elem.text or ""
        return None

    def set_text(self, ns: str, name: str, value: str) -> None:
        """Set a simple property where it already is, else add it in element form."""
        key = _q(ns, name)
        for desc, elem in self._find(ns, name):
            if elem is None:
                desc.attrib[key] = value
                return
            if len(elem) == 0:
                elem.text = value
                return
        ET.SubElement(self._main_description(), key).text = value

    def remove(self, ns: str, name: str) -> None:
        """Remove a property in both forms, from every description."""
        key = _q(ns, name)
        for desc, elem in list(self._find(ns, name)):
            if elem is None:
                desc.attrib.pop(key, None)
            else:
                desc.remove(elem)

    def get_lang_alt(self, ns: str, name: str) -> list[tuple[str, str]]:
        """``[(lang, text), ...]`` of a lang-alt property; plain-text forms count as x-default."""
        key = _q(ns, name)
        for desc, elem in self._find(ns, name):
            if elem is None:
                return [("x-default", desc.attrib[key])]
            alt = elem.find(RDF_ALT)
            if alt is None:
                return [("x-default", elem.text or "")] if len(elem) == 0 else []
            return [(li.get(XML_LANG, "x-default"), li.text or "") for li in alt.findall(RDF_LI)]
        return []

    def get_default(self, ns: str, name: str) -> str | None:
        """The ``x-default`` text of a lang-alt property (None when there is none)."""
        for lang, text in self.get_lang_alt(ns, name):
            if lang.lower() == "x-default":
                return text
        return None

    def texts_by_language(self, ns: str, name: str) -> list[str]:
        """Every text of a lang-alt property, ``x-default`` first, then the other languages in
        the order written (``en-US`` "Kids in the lake", ``de-DE`` "Kinder im See")."""
        entries = self.get_lang_alt(ns, name)
        default = [t for lang, t in entries if lang.lower() == "x-default"]
        return default + [t for lang, t in entries if lang.lower() != "x-default"]

    def set_default(self, ns: str, name: str, text: str) -> None:
        """Set the ``x-default`` entry (moved first), keeping every other language."""
        key = _q(ns, name)
        for desc, elem in list(self._find(ns, name)):
            if elem is None:  # attribute form: a lang-alt cannot be an attribute; convert
                del desc.attrib[key]
                new = ET.Element(key)
                desc.append(new)
                elem = new
            alt = elem.find(RDF_ALT)
            if alt is None:
                if len(elem) != 0:
                    continue  # some other structure under this name: leave it alone
                elem.text = None
                alt = ET.SubElement(elem, RDF_ALT)
            lis = alt.findall(RDF_LI)
            default = next(
                (li for li in lis if li.get(XML_LANG, "x-default").lower() == "x-default"), None
            )
            if default is None:
                default = ET.Element(RDF_LI, {XML_LANG: "x-default"})
            else:
                alt.remove(default)
            default.text = text
            alt.insert(0, default)  # XMP: x-default first
            return
        elem = ET.SubElement(self._main_description(), key)
        alt = ET.SubElement(elem, RDF_ALT)
        ET.SubElement(alt, RDF_LI, {XML_LANG: "x-default"}).text = text

    def put_default(self, ns: str, name: str, text: str | None) -> None:
        """:meth:`set_default`, or for ``None`` :meth:`remove_default`: an edit, or the undo
        of one (``None``: there was no text before)."""
        if text is None:
            self.remove_default(ns, name)
        else:
            self.set_default(ns, name, text)

    def remove_default(self, ns: str, name: str) -> None:
        """Remove the ``x-default`` entry; the property goes when no language is left."""
        key = _q(ns, name)
        for desc, elem in list(self._find(ns, name)):
            if elem is None:
                del desc.attrib[key]
                continue
            alt = elem.find(RDF_ALT)
            if alt is None:
                if len(elem) == 0:
                    desc.remove(elem)
                continue
            for li in alt.findall(RDF_LI):
                if li.get(XML_LANG, "x-default").lower() == "x-default":
                    alt.remove(li)
            if len(alt) == 0:
                desc.remove(elem)

    def is_empty(self) -> bool:
        """True when no description holds any property (only ``rdf:about``)."""
        for desc in self.descriptions():
            if len(desc) or any(k != RDF_ABOUT for k in desc.attrib):
                return False
        return not any(child.tag != RDF_DESCRIPTION for child in self.rdf)

    # ---- serialisation

    def serialize(self) -> bytes:
        """The document as an XMP packet (UTF-8), with sensible namespace prefixes."""
        prefixes = self._prefix_map()
        root = self.root
        ET.indent(root, space=" ")  # RDF/XML ignores whitespace between property elements
        out: list[str] = ['<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n']
        for node in self.before:
            _write_element(out, node, prefixes, declared=set(), top=False)
            out.append("\n")
        _write_element(out, root, prefixes, declared=set(), top=True)
        for node in self.after:
            out.append("\n")
            _write_element(out, node, prefixes, declared=set(), top=False)
        out.append('\n<?xpacket end="w"?>\n')
        return "".join(out).encode("utf-8")

    def _prefix_map(self) -> dict[str, str]:
        used: set[str] = set()
        for elem in self.root.iter():
            if not _is_element(elem):
                continue
            used.add(_ns(elem.tag))
            used.update(_ns(k) for k in elem.attrib)
        used.discard("")
        used.discard(NS_XML)
        result: dict[str, str] = {}
        taken: set[str] = {"xml", "xmlns"}
        # Well-known URIs get their conventional prefix; others keep the sidecar's own prefix.
        for uri in sorted(used, key=lambda u: (u not in KNOWN_PREFIXES, u)):
            wanted = KNOWN_PREFIXES.get(uri) or self.prefixes.get(uri) or "ns"
            if not re.fullmatch(r"[A-Za-z_][\w.-]*", wanted) or wanted.lower().startswith("xml"):
                wanted = "ns"
            prefix, n = wanted, 1
            while prefix in taken:
                prefix, n = f"{wanted}{n}", n + 1
            taken.add(prefix)
            result[uri] = prefix
        return result


def _is_element(node: ET.Element) -> bool:
    """False for the comment and processing-instruction nodes a parsed sidecar may hold."""
    return isinstance(node.tag, str)


def _ns(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _qname(tag: str, prefixes: dict[str, str]) -> str:
    ns = _ns(tag)
    if not ns:
        return tag
    if ns == NS_XML:
        return f"xml:{_local(tag)}"
    return f"{prefixes[ns]}:{_local(tag)}"


# Characters XML 1.0 cannot hold, not even as &#N; (control characters, lone surrogates). An
# EXIF description photocap replaces can contain them (binary junk from some cameras); it is
# recorded in the sidecar with each such character as U+FFFD, or the sidecar would not parse.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _escape_text(text: str) -> str:
    text = _NOT_XML_CHAR.sub("\ufffd", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attr(text: str) -> str:
    return (
        _escape_text(text)
        .replace('"', "&quot;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
        .replace("\t", "&#9;")
    )


def _write_element(
    out: list[str], elem: ET.Element, prefixes: dict[str, str], declared: set[str], top: bool
) -> None:
    if not _is_element(elem):  # a comment or processing instruction, kept as it was
        text = elem.text or ""
        if elem.tag is ET.Comment:
            out.append(f"<!--{text.replace('--', '- -')}-->")
        else:
            out.append(f"<?{text.replace('?>', '? >')}?>")
        if elem.tail:
            out.append(_escape_text(elem.tail))
        return
    # Namespaces are declared where XMP writers conventionally put them: x/rdf on the root,
    # everything a top-level rdf:Description uses on that description, the rest where needed.
    needed = {_ns(elem.tag)} | {_ns(k) for k in elem.attrib}
    if top:
        needed |= {NS_RDF}
    if elem.tag == RDF_DESCRIPTION:
        for sub in elem.iter():
            if _is_element(sub):
                needed.add(_ns(sub.tag))
                needed.update(_ns(k) for k in sub.attrib)
    new = sorted(u for u in needed if u and u != NS_XML and u not in declared)
    inner_declared = declared | set(new)
    parts = [_qname(elem.tag, prefixes)]
    parts += [f'xmlns:{prefixes[u]}="{_escape_attr(u)}"' for u in new]
    parts += [f'{_qname(k, prefixes)}="{_escape_attr(v)}"' for k, v in elem.attrib.items()]
    out.append("<" + " ".join(parts))
    if len(elem) == 0 and not elem.text:
        out.append("/>")
    else:
        out.append(">")
        if elem.text:
            out.append(_escape_text(elem.text))
        for child in elem:
            _write_element(out, child, prefixes, inner_declared, top=False)
        out.append(f"</{_qname(elem.tag, prefixes)}>")
    if elem.tail and not top:
        out.append(_escape_text(elem.tail))


# --------------------------------------------------------------------------- provenance


@dataclass
class Provenance:
    """photocap's own record in a sidecar (all fields optional; absent = never written)."""

    description: str | None = None  # the x-default text photocap wrote to dc:description
    alt_text: str | None = None  # the text photocap wrote to AltTextAccessibility
    previous_description: str | None = None  # the human text it replaced (overwrite_human)
    previous_alt_text: str | None = None
    exif_description: str | None = None  # what the exif writer wrote to ImageDescription
    exif_previous_description: str | None = None
    exif_previous_comment: str | None = None  # XPComment before photocap
    # The exif writer also writes the file's embedded XMP packet: what it replaced there, and
    # the alt text it wrote (its caption there is exif_description).
    exif_previous_xmp_description: str | None = None
    exif_alt_text: str | None = None
    exif_previous_alt_text: str | None = None
    exif_added_xmp: str | None = None  # "True": the file had no XMP packet before photocap's
    # How to give back the photo's exact bytes (photocap.patch): the patch from the file as
    # photocap last wrote it (that file's SHA-256) to the file before photocap's first write.
    exif_undo: str | None = None
    exif_written_sha256: str | None = None
    exif_original_sha256: str | None = None
    model: str | None = None
    score: str | None = None
    date: str | None = None
    created_sidecar: bool = False  # the sidecar did not exist before photocap wrote it

    def forget_exif(self, *, alt_text: bool = True) -> None:
        """Clear the exif writer's record of its caption (and, with ``alt_text``, of its alt
        text) once the file no longer holds it: put back by revert, or taken out for a
        person's (:func:`photocap.exif.restore_edit` with the same ``alt_text``)."""
        self.exif_description = self.exif_previous_description = None
        self.exif_previous_comment = self.exif_previous_xmp_description = None
        if alt_text:
            self.exif_alt_text = self.exif_previous_alt_text = self.exif_added_xmp = None
            self.forget_undo()

    def forget_undo(self) -> None:
        """Drop the record of the photo's original bytes (it no longer leads back to them)."""
        self.exif_undo = self.exif_written_sha256 = self.exif_original_sha256 = None


_PROV_FIELDS = {
    # Names chosen not to collide with common tag names (exiftool -Description / -Model).
    "description": "writtenDescription",
    "alt_text": "writtenAltText",
    "previous_description": "previousDescription",
    "previous_alt_text": "previousAltText",
    "exif_description": "exifDescription",
    "exif_previous_description": "exifPreviousDescription",
    "exif_previous_comment": "exifPreviousComment",
    "exif_previous_xmp_description": "exifPreviousXmpDescription",
    "exif_alt_text": "exifAltText",
    "exif_previous_alt_text": "exifPreviousAltText",
    "exif_added_xmp": "exifAddedXmp",
    "exif_undo": "exifUndo",
    "exif_written_sha256": "exifWrittenSha256",
    "exif_original_sha256": "exifOriginalSha256",
    "model": "captionModel",
    "score": "captionScore",
    "date": "captionDate",
}
XMP_OWN_FIELDS = ("description", "alt_text", "previous_description", "previous_alt_text")
EXIF_OWN_FIELDS = (
    "exif_description",
    "exif_previous_description",
    "exif_previous_comment",
    "exif_previous_xmp_description",
    "exif_alt_text",
    "exif_previous_alt_text",
    "exif_added_xmp",
    "exif_undo",
    "exif_written_sha256",
    "exif_original_sha256",
)


def read_provenance(doc: XmpDocument) -> Provenance:
    prov = Provenance()
    for attr, name in _PROV_FIELDS.items():
        setattr(prov, attr, doc.get_text(NS_PHOTOCAP, name))
    prov.created_sidecar = doc.get_text(NS_PHOTOCAP, "createdSidecar") == "True"
    return prov


def write_provenance(doc: XmpDocument, prov: Provenance) -> None:
    """Store ``prov`` in ``doc``; with nothing left to record, the photocap namespace goes."""
    own = [getattr(prov, f) for f in XMP_OWN_FIELDS + EXIF_OWN_FIELDS]
    if all(v is None for v in own):
        for name in [*_PROV_FIELDS.values(), "createdSidecar"]:
            doc.remove(NS_PHOTOCAP, name)
        return
    for attr, name in _PROV_FIELDS.items():
        value = getattr(prov, attr)
        if value is None:
            doc.remove(NS_PHOTOCAP, name)
        else:
            doc.set_text(NS_PHOTOCAP, name, value)
    if prov.created_sidecar:
        doc.set_text(NS_PHOTOCAP, "createdSidecar", "True")
    else:
        doc.remove(NS_PHOTOCAP, "createdSidecar")


def stamp(prov: Provenance, record: CaptionRecord) -> None:
    prov.model = record.model_id
    prov.score = f"{record.score:.4f}"
    prov.date = _iso(record.captioned_at)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


# --------------------------------------------------------------------------- alt text

_ALT_PREFIX = re.compile(
    r"^\s*(?:(?:an?|the)\s+)?(?:image|picture|photo(?:graph)?|close-?up|view)\s+(?:of|showing)\s+",
    re.IGNORECASE,
)


def alt_text_for(caption: str) -> str:
    """IPTC alt text from a caption: no "image of" prefix, one line, at most 250 characters."""
    text = " ".join(caption.split())
    text = _ALT_PREFIX.sub("", text, count=1)
    if text:
        text = text[0].upper() + text[1:]
    if len(text) > MAX_ALT_TEXT:
        cut = text[: MAX_ALT_TEXT - 1]
        if " " in cut[MAX_ALT_TEXT // 2 :]:
            cut = cut.rsplit(" ", 1)[0]
        text = cut.rstrip(" ,;:") + "…"
    return text


# --------------------------------------------------------------------------- sidecar I/O


def sidecar_for_write(photo: Path, naming: SidecarName) -> Path:
    """The sidecar to write for ``photo``; refuses a stem name two photos would share.

    Of a RAW+JPEG pair the RAW gets the stem sidecar; the JPEG gets :class:`SidecarTaken`.
    """
    target = sidecar_path(photo, naming)
    if naming == "stem":
        others = stem_siblings(photo)
        owner = stem_owner([photo, *others]) if others else photo
        if owner is not None and owner != photo:
            raise SidecarTaken(  # no file names: the summary counts photos by this message
                "the stem-named sidecar belongs to the RAW of this RAW+JPEG pair "
                "(--sidecar-name full gives this photo its own)"
            )
        if owner is None:
            raise WriteError(
                f"{target.name} would be shared by {photo.name} and {others[0].name}; "
                "refusing to merge two photos' captions (use --sidecar-name full)"
            )
    return target


def load_or_new(path: Path) -> tuple[XmpDocument, bool]:
    """(document, existed). Bad sidecars raise :class:`WriteError`; they are never replaced."""
    if path.is_dir():
        raise WriteError(f"sidecar path is a folder: {path}")
    if not path.exists() and not path.is_symlink():
        return XmpDocument.new(), False
    return XmpDocument.load(path), True


def save_sidecar(path: Path, doc: XmpDocument) -> None:
    """Serialise, re-parse the result (must round-trip), and write it atomically."""
    data = doc.serialize()
    check = XmpDocument.parse(data, str(path))  # our own output must be valid XMP

    def verify(tmp: Path) -> None:
        again = XmpDocument.parse(tmp.read_bytes(), str(tmp))
        for ns, name in ((NS_DC, "description"), (NS_IPTC, "AltTextAccessibility")):
            if again.get_lang_alt(ns, name) != check.get_lang_alt(ns, name):
                raise WriteError(f"verification failed writing {path}")

    check_writable(path, in_place=True)
    atomic_write(path, data, preserve_mtime=False, verify=verify)


def adopt_sidecar(old_photo: Path, photo: Path, naming: SidecarName) -> bool:
    """Move the sidecar photocap created for ``old_photo`` to ``photo``, the same photo moved
    or renamed (nothing is at ``old_photo`` now; a file manager moves the photo alone), so
    that its caption, and what photocap recorded about the file for ``photocap revert`` (a
    person's in-file caption it replaced, say), go with the photo instead of staying behind
    as an orphan. True when it was moved.

    Only the full-form sidecar (``IMG_1.jpg.xmp`` names one photo; a stem-named one may be a
    RAW's), only one holding nothing but photocap's own (one another app wrote in too is not
    photocap's to move), never over a sidecar already at the new place, and never across file
    systems: a hard link, then the old name removed.
    """
    old = sidecar_path(old_photo, "full")
    try:
        if os.path.lexists(old_photo) or old.is_symlink() or not old.is_file():
            return False
        target = sidecar_for_write(photo, naming)
        if os.path.lexists(target) or not _holds_only_photocap(XmpDocument.load(old)):
            return False
        os.link(old, target)  # fails, rather than replaces, if a file appeared there meanwhile
    except (OSError, WriteError):  # SidecarTaken is a WriteError
        return False
    with contextlib.suppress(WriteError):  # else two identical sidecars rather than none
        atomic_delete(old)
    fsync_dir(target.parent)
    return True


def _holds_only_photocap(doc: XmpDocument) -> bool:
    """A sidecar photocap created that holds nothing but its caption, alt text and record:
    what ``photocap revert`` would delete."""
    prov = read_provenance(doc)
    if not prov.created_sidecar:
        return False
    rest = XmpDocument.parse(doc.serialize())  # a copy
    for ns, name, written in (
        (NS_DC, "description", prov.description),
        (NS_IPTC, "AltTextAccessibility", prov.alt_text),
    ):
        if written is not None and rest.get_default(ns, name) == written:
            rest.put_default(ns, name, None)
    write_provenance(rest, Provenance())  # nothing recorded: the photocap fields go
    return rest.is_empty()


# Between the languages of a person's caption, as the index holds and search shows them.
LANGUAGE_SEPARATOR = " / "


def human_description(doc: XmpDocument | None, *ours: str | None) -> str | None:
    """The description a person wrote in ``doc``, in every language it has (``x-default``
    first, joined by :data:`LANGUAGE_SEPARATOR`, so that each is indexed and found); texts
    blank or one of ``ours`` (what photocap wrote) left out. photocap writes only
    ``x-default``, so a caption in ``en-US`` or ``de-DE`` alone is a person's as much as one in
    ``x-default``. None: no person's caption."""
    if doc is None:
        return None
    texts: list[str] = []
    for text in doc.texts_by_language(NS_DC, "description"):
        if not is_blank_description(text) and text not in ours and text not in texts:
            texts.append(text)
    return LANGUAGE_SEPARATOR.join(texts) or None


def read_caption(photo: Path) -> str | None:
    """The x-default description from the photo's sidecar (either naming form), if any."""
    for path in find_sidecars(photo):
        try:
            text = XmpDocument.load(path).get_default(NS_DC, "description")
        except WriteError:
            continue
        if text:
            return text
    return None


# --------------------------------------------------------------------------- the writer


def apply_caption(
    doc: XmpDocument,
    record: CaptionRecord,
    *,
    overwrite_human: bool,
    human_elsewhere: bool = False,
    existed: bool = True,
) -> tuple[WriteStatus, bool]:
    """Put ``record`` into ``doc`` following the merge rules; returns (status, doc changed).

    A description counts as photocap's own only while its x-default text is exactly the text
    photocap recorded writing; anything else non-empty was written (or edited) by a person.
    """
    prov = read_provenance(doc)
    caption = " ".join(record.caption.split())
    alt = alt_text_for(caption)
    changed = False

    current = doc.get_default(NS_DC, "description")
    ours = current is not None and current == prov.description
    # A person's caption in any language of this sidecar, or in the file or the other sidecar
    human_here = human_description(doc, prov.description) is not None
    human = human_here or human_elsewhere
    if not human or overwrite_human:
        if not ours:
            prov.previous_description = current  # a person's text, or None/"" when there was none
        if current != caption:
            doc.set_default(NS_DC, "description", caption)
            changed = True
        changed |= prov.description != caption
        prov.description = caption
    elif ours:
        # A person's caption came after ours (another language here, the file, the other
        # sidecar): ours in x-default would hide it in apps that show x-default first. Ours
        # goes, as `photocap revert` does it.
        doc.put_default(NS_DC, "description", prov.previous_description)
        prov.description = prov.previous_description = None
        changed = True

    cur_alt = doc.get_default(NS_IPTC, "AltTextAccessibility")
    alt_ours = cur_alt is not None and cur_alt == prov.alt_text
    alt_empty = not (cur_alt and cur_alt.strip())
    # With a person's description kept, alt text is only added where there is none.
    if alt_empty or overwrite_human or (alt_ours and not human):
        if not alt_ours:
            prov.previous_alt_text = cur_alt
        if cur_alt != alt:
            doc.set_default(NS_IPTC, "AltTextAccessibility", alt)
            changed = True
        changed |= prov.alt_text != alt
        prov.alt_text = alt

    if changed:
        if not existed:
            prov.created_sidecar = True
        stamp(prov, record)
        write_provenance(doc, prov)
    status: WriteStatus = "kept_human" if human and not overwrite_human else "written"
    if status == "written" and not changed:
        status = "unchanged"
    return status, changed


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# A new full-form sidecar beside the photo's stem-named one (Lightroom's, Capture One's): the
# caption is where darktable and digiKam read it, but not Lightroom. No file names: the
# summary counts photos by this message.
STEM_SIDECAR_BESIDE = (
    "written to a new photo.jpg.xmp beside the photo's photo.xmp, the one Lightroom reads "
    "(--sidecar-name stem writes there)"
)


class XmpWriter:
    """``--write xmp``: caption, alt text and provenance in an XMP sidecar."""

    name = "xmp"

    def __init__(self, options: WriteOptions) -> None:
        self.options = options

    def write(self, record: CaptionRecord) -> WriteOutcome:
        photo = record.path
        try:
            target = sidecar_for_write(photo, self.options.sidecar_name)
            doc, existed = load_or_new(target)
            here = doc.get_default(NS_DC, "description")
            human = find_human_caption(photo, record.caption)
            status, changed = apply_caption(
                doc,
                record,
                overwrite_human=self.options.overwrite_human,
                human_elsewhere=human is not None and human != here,
                existed=existed,
            )
            if changed and not self.options.dry_run:
                save_sidecar(target, doc)
        except SidecarTaken as err:  # the JPEG of a RAW+JPEG pair, stem naming
            return WriteOutcome(self.name, photo, "skipped", one_line(err))
        except WriteError as err:
            return WriteOutcome(self.name, photo, "failed", one_line(err))
        except OSError as err:
            return WriteOutcome(self.name, photo, "failed", describe_os_error(err, photo))
        message = "kept human caption" if status == "kept_human" else ""
        if status == "written" and not existed:  # a new sidecar: is the photo's own beside it?
            stem = sidecar_path(photo, "stem")
            if target != stem and stem in find_sidecars(photo):
                message = STEM_SIDECAR_BESIDE
        return WriteOutcome(self.name, photo, status, message, human_caption=human)

    def close(self) -> None:
        """Nothing buffered: every sidecar is written (atomically) in :meth:`write`."""


def find_human_caption(photo: Path, caption: str = "") -> str | None:
    """A caption a person wrote for ``photo``, if any: in its sidecars (either naming form), or
    inside the file (:func:`_human_caption_in_file`). Text photocap recorded writing, and
    ``caption`` itself, are not a person's. Unreadable sidecars are skipped, not judged.

    Apps that read sidecars first (digiKam, darktable, Immich) would show a sidecar caption of
    photocap's over a person's caption in the file; the index makes a person's searchable.
    """
    found, prov = human_caption_in_sidecars(photo)
    return found or _human_caption_in_file(photo, prov, caption)


def human_caption_in_sidecars(photo: Path) -> tuple[str | None, Provenance]:
    """(The first sidecar description of ``photo`` a person wrote, or None; what photocap
    recorded writing, gathered from its sidecars)."""
    prov = Provenance()
    found: str | None = None
    for sidecar in find_sidecars(photo):
        try:
            doc = XmpDocument.load(sidecar)
        except WriteError:
            continue
        mine = read_provenance(doc)
        prov.description = prov.description or mine.description
        prov.exif_description = prov.exif_description or mine.exif_description
        if found is None:
            found = human_description(doc, mine.description)
    return found, prov


def _human_caption_in_file(photo: Path, prov: Provenance, caption: str) -> str | None:
    """A description a person wrote inside the photo (EXIF, XMP, IPTC), if any: JPEG, WebP,
    TIFF, PNG, HEIC, AVIF. A file that cannot be read or parsed here is left to the decoder
    to report."""
    from photocap.embedded import read_photo_text

    try:
        text = read_photo_text(photo)
        if text is None:
            return None
        ours = (prov.description, prov.exif_description, " ".join(caption.split()))
        return text.human_caption(*ours, strict=False)
    except WriteError:
        return None


register_writer("xmp", XmpWriter)
