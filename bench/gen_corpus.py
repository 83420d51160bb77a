#!/usr/bin/env python3
# Copied unchanged from the peers' reference scripts (shared peers folder, gen_corpus.py).
"""Write a synthetic corpus of DICOM files with unique UIDs, built from a test file that pydicom ships.

usage: gen_corpus.py OUTDIR [--studies N] [--series N] [--images N] [--source CT_small.dcm]
"""
import argparse, os
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--studies", type=int, default=20)
p.add_argument("--series", type=int, default=5)
p.add_argument("--images", type=int, default=20)
p.add_argument("--source", default="CT_small.dcm")
p.add_argument("--patients", type=int, default=0, help="distinct patients (default: one per study)")
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
base = dcmread(get_testdata_file(a.source))
n = 0
for st in range(a.studies):
    pid = st % a.patients if a.patients else st
    study_uid = generate_uid()
    for se in range(a.series):
        series_uid = generate_uid()
        for im in range(a.images):
            ds = base.copy()
            ds.PatientID = f"PID{pid:06d}"
            ds.PatientName = f"TEST^PATIENT{pid:06d}"
            ds.AccessionNumber = f"ACC{st:06d}"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = se + 1
            ds.InstanceNumber = im + 1
            ds.StudyDate = f"2026{1 + st % 12:02d}{1 + st % 28:02d}"
            uid = generate_uid()
            ds.SOPInstanceUID = uid
            ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.save_as(os.path.join(a.out, f"{n:07d}.dcm"), enforce_file_format=True)
            n += 1
print(n, "files written to", a.out)
