"""Key Object Selection title codes: the single home of the codes KIN, IOCM, TCE and XDS-I use.

Document titles of Key Object Selection documents come from CID 7010 (PS3.16); IOCM rejection
notes (IHE RAD TF-1 IOCM, RAD-66) use four of them, with the quality reasons of CID 7011 as
Document Title Modifiers; the Teaching File and Clinical Trial Export profile (IHE RAD TF-3
RAD-53) uses its own IHERADTF titles and their later DICOM equivalents.
"""
from __future__ import annotations

from pydicom.sr.coding import Code

# --- concept names of TID 2010 content items ------------------------------------------------
KEY_OBJECT_DESCRIPTION = Code("113012", "DCM", "Key Object Description")
DOCUMENT_TITLE_MODIFIER = Code("113011", "DCM", "Document Title Modifier")

# --- CID 7010 Key Object Selection Document Title ------------------------------------------
OF_INTEREST = Code("113000", "DCM", "Of Interest")
MANIFEST = Code("113030", "DCM", "Manifest")

# IOCM rejection note titles (RAD-66)
REJECTED_FOR_QUALITY_REASONS = Code("113001", "DCM", "Rejected for Quality Reasons")
REJECTED_FOR_PATIENT_SAFETY_REASONS = Code("113037", "DCM", "Rejected for Patient Safety Reasons")
INCORRECT_MODALITY_WORKLIST_ENTRY = Code("113038", "DCM", "Incorrect Modality Worklist Entry")
DATA_RETENTION_POLICY_EXPIRED = Code("113039", "DCM", "Data Retention Policy Expired")

#: rejection titles by friendly name (the ``--reason`` words of ``ihe iocm reject``)
REJECTION_REASONS: dict[str, Code] = {
    "quality": REJECTED_FOR_QUALITY_REASONS,
    "patient-safety": REJECTED_FOR_PATIENT_SAFETY_REASONS,
    "incorrect-mpps": INCORRECT_MODALITY_WORKLIST_ENTRY,
    "data-retention": DATA_RETENTION_POLICY_EXPIRED,
}
#: rejection titles by code value (all four are in scheme DCM)
REJECTION_TITLES: dict[str, Code] = {c.value: c for c in REJECTION_REASONS.values()}

# CID 7011 Rejected for Quality Reasons: the IOCM quality reason modifiers (111207-111212)
QUALITY_REASONS: dict[str, Code] = {
    "image-artifacts": Code("111207", "DCM", "Image artifact(s)"),
    "grid-artifacts": Code("111208", "DCM", "Grid artifact(s)"),
    "positioning": Code("111209", "DCM", "Positioning"),
    "motion-blur": Code("111210", "DCM", "Motion blur"),
    "under-exposed": Code("111211", "DCM", "Under exposed"),
    "over-exposed": Code("111212", "DCM", "Over exposed"),
}

# --- TCE (RAD-53 Export Instances) -----------------------------------------------------------
TCE_SCHEME = "IHERADTF"
TCE_TITLES: dict[str, Code] = {
    # IHE RAD TF TCE: the original titles
    "TCE001": Code("TCE001", TCE_SCHEME, "For Teaching File Export"),
    "TCE002": Code("TCE002", TCE_SCHEME, "For Clinical Trial Export"),
    "TCE007": Code("TCE007", TCE_SCHEME, "For Research Collection Export"),
    "TCE008": Code("TCE008", TCE_SCHEME, "For Publication Export"),
    # their DICOM equivalents in CID 7010
    "128710": Code("128710", "DCM", "For Teaching File Export"),
    "128711": Code("128711", "DCM", "For Clinical Trial Export"),
    "128713": Code("128713", "DCM", "For Research Collection Export"),
    "128714": Code("128714", "DCM", "For Publication Export"),
}

#: TCE delay reasons, sent as Document Title Modifiers of a TCE manifest
TCE_DELAY_REASONS: dict[str, Code] = {c.value: c for c in (
    Code("TCE011", TCE_SCHEME, "Delay export until final report is available"),
    Code("TCE012", TCE_SCHEME, "Delay export until clinical information is available"),
    Code("TCE013", TCE_SCHEME, "Delay export until confirmation of diagnosis is available"),
    Code("TCE014", TCE_SCHEME, "Delay export until histopathology is available"),
    Code("TCE015", TCE_SCHEME, "Delay export until other laboratory results is available"),
    Code("TCE016", TCE_SCHEME, "Delay export until patient is discharged"),
    Code("TCE017", TCE_SCHEME, "Delay export until patient dies"),
    Code("TCE018", TCE_SCHEME, "Delay export until expert review is available"),
)}


def _cid7010() -> dict[str, Code]:
    """CID 7010 as shipped with pydicom, keyed by friendly name ('of-interest')."""
    import re

    from pydicom.sr.codedict import codes

    out: dict[str, Code] = {}
    cid = codes.cid7010
    for keyword in cid.dir():
        code = getattr(cid, keyword)
        name = re.sub(r"[^a-z0-9]+", "-", code.meaning.lower()).strip("-")
        out[name] = Code(code.value, code.scheme_designator, code.meaning)
    return out


#: every CID 7010 title by friendly name: 'of-interest', 'for-referring-provider', ...
KOS_TITLES: dict[str, Code] = _cid7010()
_BY_CODE: dict[tuple[str, str], Code] = {(c.scheme_designator, c.value): c for c in KOS_TITLES.values()}
_BY_CODE.update({(c.scheme_designator, c.value): c for c in TCE_TITLES.values()})


def title_code(name_or_code: str) -> Code:
    """The title for a friendly name ('of-interest'), a code value ('113000', 'TCE001') or
    'SCHEME:VALUE' ('DCM:113000'). Raises ValueError for an unknown title."""
    text = name_or_code.strip()
    key = text.lower().replace("_", "-").replace(" ", "-")
    if key in KOS_TITLES:
        return KOS_TITLES[key]
    if ":" in text:
        scheme, _, value = text.partition(":")
        found = _BY_CODE.get((scheme.strip().upper(), value.strip().upper()))
    else:
        found = next((c for (s, v), c in _BY_CODE.items() if v == text.upper()), None)
    if found is None:
        raise ValueError(f"unknown Key Object Selection title {name_or_code!r} "
                         "(a CID 7010 name such as 'of-interest', or a code such as 113000)")
    return found


def is_rejection_title(value: str, scheme: str = "DCM") -> bool:
    """True for the four IOCM rejection note titles."""
    return scheme == "DCM" and value in REJECTION_TITLES


def is_tce_title(value: str, scheme: str) -> bool:
    """True for the TCE titles (IHERADTF TCE001/2/7/8 and DCM 128710/1/3/4)."""
    code = TCE_TITLES.get(value)
    return code is not None and code.scheme_designator == scheme
