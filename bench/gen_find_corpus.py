#!/usr/bin/env python3
# Copied unchanged from the peers' reference scripts (shared peers folder, gen_find_corpus.py).
"""A query-load corpus: N studies x 1 series x K instances, no pixel data, realistic names and dates.

usage: gen_find_corpus.py OUTDIR [--studies 10000] [--images 10]
Surnames cycle through a fixed list so `PatientName=SMITH*` matches a known share (1/20 of patients)."""
import argparse, os, random
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

SURNAMES = ["SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "RODRIGUEZ", "MARTINEZ",
            "HERNANDEZ", "LOPEZ", "GONZALEZ", "WILSON", "ANDERSON", "THOMAS", "TAYLOR", "MOORE", "JACKSON", "MARTIN"]
p = argparse.ArgumentParser(); p.add_argument("out"); p.add_argument("--studies", type=int, default=10000)
p.add_argument("--images", type=int, default=10); a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
rng = random.Random(7)
base = dcmread(get_testdata_file("CT_small.dcm"))
del base.PixelData
n = 0
for st in range(a.studies):
    pid = st // 2  # two studies per patient
    ds = base.copy()
    ds.PatientID = f"P{pid:07d}"
    ds.PatientName = f"{SURNAMES[pid % 20]}^GIVEN{pid:07d}"
    ds.PatientBirthDate = f"19{40 + pid % 60:02d}{1 + pid % 12:02d}{1 + pid % 28:02d}"
    ds.StudyInstanceUID = generate_uid(); ds.SeriesInstanceUID = generate_uid()
    ds.AccessionNumber = f"A{st:08d}"; ds.StudyDate = f"20{10 + st % 16:02d}{1 + st % 12:02d}{1 + st % 28:02d}"
    ds.Modality = rng.choice(["CT", "MR", "US", "CR", "DX"]); ds.StudyDescription = f"STUDY {st}"
    for im in range(a.images):
        ds.InstanceNumber = im + 1
        uid = generate_uid(); ds.SOPInstanceUID = uid; ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(os.path.join(a.out, f"{n:08d}.dcm"), enforce_file_format=True); n += 1
print(n, "files in", a.out)
