"""Make BIDS datasets of the real IXI-HH target domain: a training set and 16 held-out subjects.

IXI Hammersmith Hospital T1w heads (Philips Intera 3T, 2 mm; IXI dataset, brain-development.org,
CC BY-SA 3.0) from ``../shared/data/IXI-HH``. The 16 held-out subjects are a fixed random draw
(seed 0) over the sorted subject IDs; they are never trained on and serve validation and the
real-anatomy traveling-subject test. Images are symbolic links to the shared files.

    python training/ixi_hh_bids.py work/ixi-hh      # -> work/ixi-hh/train, work/ixi-hh/heldout, work/ixi-hh/all
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "IXI-HH"
N_HELDOUT = 16
SPLIT_SEED = 0
SCANNER = {"Manufacturer": "Philips Medical Systems", "ManufacturersModelName": "Intera",
           "MagneticFieldStrength": 3, "InstitutionName": "Hammersmith Hospital"}
LICENSE = "CC BY-SA 3.0"
CREDIT = "IXI dataset, brain-development.org"


def subjects(source: Path = SOURCE) -> dict[str, Path]:
    """Subject label (``IXI013``) -> image file, sorted by label."""
    files = sorted(source.glob("IXI*-HH-*_T1.nii.gz"))
    return {re.match(r"(IXI\d+)-HH", f.name).group(1): f for f in files}


def split(labels: list[str]) -> tuple[list[str], list[str]]:
    """(training labels, held-out labels): a fixed seeded draw of ``N_HELDOUT`` held-out subjects."""
    labels = sorted(labels)
    held = set(np.random.default_rng(SPLIT_SEED).permutation(len(labels))[:N_HELDOUT].tolist())
    return ([s for k, s in enumerate(labels) if k not in held], [s for k, s in enumerate(labels) if k in held])


def write_dataset(root: Path, files: dict[str, Path], name: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    description = {"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw", "License": LICENSE,
                   "Acknowledgements": f"{CREDIT}; 2 mm 8-bit version from CBICA/NiChart_Project",
                   "HowToAcknowledge": f"Credit '{CREDIT}' (CC BY-SA 3.0)."}
    (root / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")
    (root / "T1w.json").write_text(json.dumps(SCANNER, indent=2) + "\n")
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in files))
    for label, path in files.items():
        anat = root / f"sub-{label}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        link = anat / f"sub-{label}_T1w.nii.gz"
        if not link.is_symlink():
            link.symlink_to(path.resolve())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    args = p.parse_args(argv)
    files = subjects()
    if not files:
        print(f"ixi_hh_bids: no IXI-HH images under {SOURCE}; put ../shared beside the repository")
        return 2
    train, heldout = split(list(files))
    write_dataset(args.out_dir / "train", {s: files[s] for s in train}, "IXI-HH target domain (training)")
    write_dataset(args.out_dir / "heldout", {s: files[s] for s in heldout}, "IXI-HH target domain (held out)")
    write_dataset(args.out_dir / "all", files, "IXI-HH target domain (all; bhd-train --validation-label picks the "
                  "held-out subjects from it)")
    print(f"{len(train)} training and {len(heldout)} held-out subjects under {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
