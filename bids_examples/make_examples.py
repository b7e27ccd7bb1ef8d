#!/usr/bin/env python
"""Generate ``bids_examples/ds-travel``: a small multi-site BIDS dataset of traveling subjects.

Each subject is one anatomy (MNI152 2009a tissue maps from nilearn, deformed per
subject) scanned on several simulated scanners modelled on the paper's Table S1
(``bhd_app.evaluation.simulation``): the target Siemens Trio 3T MPRAGE in every subject, and
sources at 1.5T (Sonata MPRAGE, Vision FLASH: the large gap) and 3T (BioGraph,
Vida), plus a 3T T2w; with skull and scalp, bias field, Rician noise and
scanner-like orientations. Subject 03 has white-matter lesions.

    python bids_examples/make_examples.py [OUT_DIR]

The output is deterministic (fixed seeds 1-3, disjoint from the training
subjects 1000+, the validation 3000+ and the benchmark 2000+).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bhd_app.evaluation.simulation import PROTOCOLS, make_anatomy, acquire  # noqa: E402

# subject -> (anatomy seed, lesions, [(session, protocol), ...])
SUBJECTS = {
    "01": (1, 0, [("trio", "trio3t"), ("trio", "t2w3t"), ("sonata", "sonata15t"), ("vision", "vision15t")]),
    "02": (2, 0, [("trio", "trio3t"), ("biograph", "biograph3t"), ("vida", "vida3t")]),
    "03": (3, 4, [("trio", "trio3t"), ("sonata", "sonata15t")]),
}
AGES = {"01": 34, "02": 61, "03": 72}
SEX = {"01": "F", "02": "M", "03": "F"}


def sidecar(protocol_name: str) -> dict:
    p = PROTOCOLS[protocol_name]
    meta = {
        "Manufacturer": p.manufacturer,
        "ManufacturersModelName": p.model,
        "MagneticFieldStrength": p.field_strength,
        "RepetitionTime": p.tr / 1000.0,
        "EchoTime": p.te / 1000.0,
        "FlipAngle": p.flip_angle,
        "PulseSequenceType": {"MPRAGE": "MPRAGE", "FLASH": "Spoiled Gradient Echo", "TSE": "Turbo Spin Echo"}[p.sequence],
        "SeriesDescription": f"{p.sequence} {p.field_strength:g}T (simulated, bhd_app.evaluation.simulation protocol {p.name})",
    }
    if p.sequence == "MPRAGE":
        meta["InversionTime"] = p.ti / 1000.0
    return meta


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def main(out: Path, subjects: dict = SUBJECTS, ages: dict = AGES, sex: dict = SEX) -> None:
    """Write the dataset; ``subjects`` maps a label to (anatomy seed, lesions, [(session, protocol), ...])."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_json(out / "dataset_description.json", {
        "Name": "bhd traveling-subject examples (simulated)",
        "BIDSVersion": "1.10.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["bhd developers"],
        "GeneratedBy": [{"Name": "bhd bids_examples/make_examples.py"}],
    })
    (out / "README").write_text(
        "Simulated traveling subjects for bhd (see bids_examples/make_examples.py).\n"
        "Anatomy: MNI152 2009a tissue maps shipped by nilearn, deformed per subject; MR physics rendering.\n"
        "ses-trio is the target domain (Siemens TIM Trio 3T MPRAGE, paper Table S1).\n")
    with open(out / "participants.tsv", "w") as f:
        f.write("participant_id\tage\tsex\n")
        for sub in subjects:
            f.write(f"sub-{sub}\t{ages[sub]}\t{sex[sub]}\n")
    write_json(out / "participants.json", {"age": {"Description": "age", "Units": "year"},
                                           "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}}})
    for sub, (seed, lesions, scans) in subjects.items():
        anatomy = make_anatomy(seed, lesions=lesions)
        for k, (ses, protocol) in enumerate(scans):
            p = PROTOCOLS[protocol]
            image, affine = acquire(anatomy, p, seed=seed * 100 + k)
            anat = out / f"sub-{sub}" / f"ses-{ses}" / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            name = f"sub-{sub}_ses-{ses}_{p.suffix}"
            img = nib.Nifti1Image(image, affine)
            img.header.set_xyzt_units("mm", "sec")
            img.header.set_qform(affine, code=1)
            img.header.set_sform(affine, code=1)
            nib.save(img, anat / f"{name}.nii.gz")
            write_json(anat / f"{name}.json", sidecar(protocol))
            print(f"wrote {anat / name}.nii.gz {image.shape} {nib.aff2axcodes(affine)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "ds-travel")
