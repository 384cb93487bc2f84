"""Patient-level K-fold splits in nnU-Net's ``splits_final.json`` format.

The file is a list with one ``{"train": [case, ...], "test": [case, ...]}`` object per fold (the paper's
files under ``spider-metadata/paper-splits`` use exactly this). Every case of a patient lands in the same
fold, so T1 and T2 series of one patient never straddle training and test.

Case names are matched to patients by :func:`patient_of`, which understands our names (``107_t2_SPACE``),
the paper's (``SPIDER_107``, ``SPIDER_107_t2_085``) and nnU-Net style ``SPIDER_107_...`` identifiers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spinesegdiff.errors import InputError, MissingInputError
from spinesegdiff.files import atomic_write_text

Split = list[dict[str, list[str]]]
_PATIENT = re.compile(r"^(?:SPIDER_)?0*(?P<patient>\d+)(?:_.*)?$")


def patient_of(case_name: str) -> str:
    """The SPIDER patient number of a case name, without leading zeros (``SPIDER_007_t1_086`` -> ``7``)."""
    match = _PATIENT.match(case_name)
    if match is None:
        raise ValueError(f"cannot read a patient number from case name {case_name!r}")
    return match["patient"]


def make_patient_folds(case_names: Sequence[str], *, num_folds: int = 5, seed: int = 12345) -> Split:
    """Shuffle patients with ``seed`` and deal them round-robin into ``num_folds`` folds.

    Args:
        case_names: the cases to split; their patients come from :func:`patient_of`.
        num_folds: K (>= 2 and at most the number of patients).
        seed: NumPy seed; the same cases and seed give the same split on every machine.

    Returns:
        ``num_folds`` dicts whose ``test`` lists are patient-disjoint and cover every case once.
    """
    patients = sorted({patient_of(name) for name in case_names}, key=int)
    if not 2 <= num_folds <= len(patients):
        raise ValueError(
            f"num_folds must be between 2 and the number of patients ({len(patients)}), got {num_folds}"
        )
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = {patients[p]: rank % num_folds for rank, p in enumerate(order)}
    split: Split = []
    for fold in range(num_folds):
        test = [c for c in case_names if fold_of[patient_of(c)] == fold]
        train = [c for c in case_names if fold_of[patient_of(c)] != fold]
        split.append({"train": sorted(train), "test": sorted(test)})
    return split


def validation_patients(train_cases: Sequence[str], *, fraction: float = 0.15, seed: int = 0) -> set[str]:
    """A seeded patient-disjoint subset of the training cases' patients kept for validation (at least one)."""
    patients = sorted({patient_of(c) for c in train_cases}, key=int)
    if len(patients) < 2:
        raise ValueError("at least two training patients are needed to hold one out for validation")
    count = min(len(patients) - 1, max(1, round(fraction * len(patients))))
    chosen = np.random.default_rng(seed).choice(len(patients), size=count, replace=False)
    return {patients[i] for i in chosen}


def save_split(split: Split, path: str | Path) -> Path:
    """Write ``split`` as ``splits_final.json`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(split, indent=2))
    return path


def load_split(path: str | Path) -> Split:
    """Read a ``splits_final.json`` (ours or the paper's) and check its shape.

    Raises:
        MissingInputError, InputError: missing file, not JSON, or not a list of train/test dicts.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError(path, "split file")
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not a JSON file ({err})") from err
    if (
        not isinstance(split, list)
        or not split
        or not all(
            isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("test"), list)
            for f in split
        )
    ):
        raise InputError(path, 'expected a list of {"train": [...], "test": [...]} folds')
    return split


def patient_folds(split: Split) -> dict[str, int]:
    """Test fold of every patient named in a split's ``test`` lists.

    Raises:
        ValueError: a patient is in the test list of two folds (the split is not patient-disjoint).
    """
    folds: dict[str, int] = {}
    for fold, entry in enumerate(split):
        for case in entry["test"]:
            patient = patient_of(case)
            if folds.setdefault(patient, fold) != fold:
                raise ValueError(f"patient {patient} is in the test set of folds {folds[patient]} and {fold}")
    return folds


def apply_split(split: Split, case_names: Sequence[str], *, source: str | Path | None = None) -> Split:
    """Re-express a split (the paper's, say) on our case names, fold by fold, matching on patient number.

    Raises:
        InputError: a case's patient is not in any test fold of ``split``.
    """
    folds = patient_folds(split)
    missing = sorted({patient_of(c) for c in case_names} - folds.keys(), key=int)
    if missing:
        raise InputError(source, f"patients {', '.join(missing[:10])} are in no fold of the split")
    return [
        {
            "train": sorted(c for c in case_names if folds[patient_of(c)] != fold),
            "test": sorted(c for c in case_names if folds[patient_of(c)] == fold),
        }
        for fold in range(len(split))
    ]
