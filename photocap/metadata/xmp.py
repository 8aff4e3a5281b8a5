"""The XMP document: parse, read, edit and serialise an XMP packet, nothing more.

Sidecars and packets embedded in files are the same RDF/XML document. :class:`XmpDocument`
parses one with defusedxml (no entity expansion, no external entities) and edits it as a tree,
so every other field, namespace, language, attribute and structure (ratings, keywords,
darktable history, Lightroom ``crs:`` settings, unknown namespaces, comments) is written back
unchanged. Properties may be in attribute or element form, in any of several
``rdf:Description`` elements; every method handles both.

Also here: :func:`parse_packet` (a packet embedded in a file), :func:`apply_xmp_edit` (the
x-default texts a rewrite changes) and :func:`verify_xmp_edit` (our texts read back and nothing
else changed), which every format's verification shares.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from photocap.errors import MetadataError, WriteError
from photocap.safeio import read_capped


def parse_packet(packet: bytes) -> XmpDocument:
    """The embedded packet as a document; a malformed one raises :class:`WriteError`.

    A packet is XML padded with whitespace, sometimes NUL-terminated by its writer.
    """
    return XmpDocument.parse(packet.rstrip(b"\x00 \t\r\n"), "the photo's embedded XMP")


def xmp_description(doc: XmpDocument | None) -> str | None:
    """The x-default ``dc:description`` of an embedded packet, or None."""
    return None if doc is None else doc.get_default(NS_DC, "description")


def apply_xmp_edit(doc: XmpDocument, changes: dict[tuple[str, str], str | None]) -> None:
    """Set (or, for None, remove) the x-default entry of each lang-alt property."""
    for (ns, name), text in changes.items():
        doc.put_default(ns, name, text)


def verify_xmp_edit(
    old: bytes | None, new: bytes | None, changes: dict[tuple[str, str], str | None]
) -> None:
    """Our texts read back from the new packet; with them taken out, both packets say the same."""
    after = parse_packet(new) if new is not None else None
    for (ns, name), text in changes.items():
        got = after.get_default(ns, name) if after is not None else None
        if got != text:
            raise WriteError(f"verification failed: XMP {name} not as written")

    def rest(packet: bytes | None) -> bytes:
        if packet is None:
            return b""
        doc = parse_packet(packet)
        for ns, name in changes:
            doc.remove_default(ns, name)
        for elem in doc.root.iter():  # layout whitespace is not content (RDF/XML ignores it)
            if elem.text is not None and not elem.text.strip() and len(elem) == 0:
                elem.text = None
        return b"" if doc.is_empty() else doc.serialize()

    if rest(old) != rest(new):
        raise WriteError("verification failed: other XMP properties changed")


NS_X = "adobe:ns:meta/"


NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"


NS_XML = "http://www.w3.org/XML/1998/namespace"


NS_DC = "http://purl.org/dc/elements/1.1/"


NS_IPTC = "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/"


NS_PHOTOCAP = "https://github.com/photocap/ns/1.0/"
# Lightroom's namespace: hierarchicalSubject, keywords as paths ("Places|France|Paris").
NS_LIGHTROOM = "http://ns.adobe.com/lightroom/1.0/"


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


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


RDF_RDF = _q(NS_RDF, "RDF")


RDF_DESCRIPTION = _q(NS_RDF, "Description")


RDF_ALT = _q(NS_RDF, "Alt")


RDF_LI = _q(NS_RDF, "li")


RDF_ABOUT = _q(NS_RDF, "about")


XML_LANG = _q(NS_XML, "lang")


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
            raise MetadataError(f"not an XMP sidecar (root element {_local(root.tag)!r})")

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
            raise MetadataError(f"unsafe XML refused ({type(err).__name__}) in {source}") from None
        except ET.ParseError as err:
            raise MetadataError(f"malformed XML in {source}: {err}") from None
        if root is None:
            raise MetadataError(f"empty XML document: {source}")
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

    def get_items(self, ns: str, name: str) -> list[str]:
        """The texts of a bag or sequence property (``dc:subject``: keywords), in order; a
        simple property counts as one item."""
        key = _q(ns, name)
        for desc, elem in self._find(ns, name):
            if elem is None:
                return [desc.attrib[key]]
            if len(elem) == 0:
                return [elem.text] if elem.text and elem.text.strip() else []
            items = []
            for container in elem:
                if _is_element(container):
                    items += [li.text for li in container.findall(RDF_LI) if li.text]
            return items
        return []

    def keywords(self) -> list[str]:
        """The keywords people gave the photo here: ``dc:subject`` (digiKam, darktable,
        Lightroom, exiftool) and Lightroom's hierarchical subjects, each level of
        "Places|France|Paris" a keyword; each once, in order."""
        words = self.get_items(NS_DC, "subject")
        for path in self.get_items(NS_LIGHTROOM, "hierarchicalSubject"):
            words += path.split("|")
        return list(dict.fromkeys(w.strip() for w in words if w.strip()))

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
