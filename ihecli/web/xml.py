"""DICOM Native XML (PS3.19 Annex A; application/dicom+xml) to and from pydicom datasets.

Hand-written: pydicom reads and writes DICOM JSON but not the Native DICOM Model. The parser
never resolves entities, loads DTDs or fetches anything.
"""
from __future__ import annotations

from lxml import etree
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

NUMBER_VRS = {"DS", "FL", "FD", "IS", "SL", "SS", "UL", "US", "SV", "UV"}
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def to_xml(ds: Dataset) -> bytes:
    root = etree.Element("NativeDicomModel")
    _fill(root, ds)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _fill(parent, ds: Dataset) -> None:
    for elem in ds:
        tag = f"{int(elem.tag):08X}"
        a = etree.SubElement(parent, "DicomAttribute", tag=tag, vr=elem.VR)
        if elem.keyword:
            a.set("keyword", elem.keyword)
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or [], 1):
                it = etree.SubElement(a, "Item", number=str(i))
                _fill(it, item)
            continue
        if elem.VR in BINARY_VRS or elem.value is None or elem.value == "":
            continue
        values = elem.value if isinstance(elem.value, (list, tuple)) or type(elem.value).__name__ == "MultiValue" \
            else [elem.value]
        for i, v in enumerate(values, 1):
            if elem.VR == "PN":
                pn = etree.SubElement(a, "PersonName", number=str(i))
                alpha = etree.SubElement(pn, "Alphabetic")
                comps = str(v).split("=")[0].split("^")
                for name, c in zip(("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix"), comps):
                    if c:
                        etree.SubElement(alpha, name).text = c
            else:
                etree.SubElement(a, "Value", number=str(i)).text = str(v)


def from_xml(data: bytes) -> tuple[Dataset, dict[int, str]]:
    """(dataset, {tag: BulkData uri} of its top-level bulk data references)."""
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as e:
        raise ValueError(f"bad DICOM XML: {e}") from None
    if etree.QName(root).localname != "NativeDicomModel":
        raise ValueError("DICOM XML must have a NativeDicomModel root element")
    bulk: dict[int, str] = {}
    return _read(root, bulk, top=True), bulk


def _read(node, bulk: dict, top: bool = False) -> Dataset:
    ds = Dataset()
    for a in node:
        if not isinstance(a.tag, str) or etree.QName(a).localname != "DicomAttribute":
            continue
        try:
            tag = int(a.get("tag", ""), 16)
        except ValueError:
            raise ValueError(f"bad tag {a.get('tag')!r} in DICOM XML") from None
        vr = a.get("vr") or "UN"
        kids = {etree.QName(c).localname: c for c in a if isinstance(c.tag, str)}
        if vr == "SQ":
            items = [_read(c, bulk) for c in a if isinstance(c.tag, str) and etree.QName(c).localname == "Item"]
            ds.add_new(tag, "SQ", Sequence(items))
            continue
        if "BulkData" in kids:
            if top:
                bulk[tag] = kids["BulkData"].get("uri") or kids["BulkData"].get("uuid") or ""
            continue
        if "InlineBinary" in kids:
            import base64

            ds.add_new(tag, vr, base64.b64decode(kids["InlineBinary"].text or ""))
            continue
        values = []
        for c in a:
            if not isinstance(c.tag, str):
                continue
            name = etree.QName(c).localname
            if name == "Value":
                values.append(c.text or "")
            elif name == "PersonName":
                alpha = next((x for x in c if isinstance(x.tag, str) and etree.QName(x).localname == "Alphabetic"),
                             None)
                comps = []
                if alpha is not None:
                    parts = {etree.QName(x).localname: (x.text or "") for x in alpha if isinstance(x.tag, str)}
                    comps = [parts.get(k, "") for k in ("FamilyName", "GivenName", "MiddleName", "NamePrefix",
                                                        "NameSuffix")]
                values.append(PersonName("^".join(comps).rstrip("^")))
        if vr in NUMBER_VRS:
            conv = float if vr in ("FL", "FD") else int if vr not in ("DS",) else str
            values = [conv(v) for v in values]
        ds.add_new(tag, vr, values[0] if len(values) == 1 else (values or None))
    return ds
