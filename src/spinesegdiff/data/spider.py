"""SPIDER folders, contrast sets and pathology metadata.

SPIDER (van der Graaf et al., "Lumbar spine segmentation in MR images: a dataset and a public benchmark",
Scientific Data 11:264, 2024; CC BY 4.0) is laid out as ``images/<id>_<t1|t2|t2_SPACE>.mha`` with the mask of the
same name in ``masks/``. :func:`find_cases` reads that layout unchanged (the full release or a subset).

Pathology flags (:func:`pathology_flags`) aggregate ``radiological_gradings.csv`` (one row per disc level) to one
row per patient with this rule: a pathology is present when it is graded at ANY disc level of the patient
(Modic type > 0; up/low endplate change, spondylolisthesis, herniation, narrowing, bulging = 1); degeneration is
present when the Pfirrmann grade is >= 4 at any level.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from spinesegdiff.errors import InputError, MissingInputError

Contrast = Literal["t1", "t2", "t2_SPACE"]
ContrastSet = Literal["T1w", "T2w", "T1w+T2w"]
CONTRAST_SETS: tuple[str, ...] = ("T1w", "T2w", "T1w+T2w")
_CASE_NAME = re.compile(r"^(?P<patient>\d+)_(?P<contrast>t1|t2|t2_SPACE)$")

PATHOLOGIES: tuple[str, ...] = (
    "modic",
    "upper_endplate",
    "lower_endplate",
    "spondylolisthesis",
    "disc_herniation",
    "disc_narrowing",
    "disc_bulging",
    "degeneration",
)
"""Per-patient pathology flags, in the order of ``radiological_gradings.csv``."""
DEGENERATION_MIN_PFIRRMANN = 4


@dataclass(frozen=True)
class SpiderCase:
    """One SPIDER series.

    Attributes:
        case_id: the file stem, for example ``107_t2_SPACE``.
        patient_id: the SPIDER patient number as text, for example ``107``.
        contrast: ``t1``, ``t2`` or ``t2_SPACE``.
        image_path: the image file.
        mask_path: the mask file, or ``None`` where the folder has none.
    """

    case_id: str
    patient_id: str
    contrast: Contrast
    image_path: Path
    mask_path: Path | None


def parse_case_name(name: str) -> tuple[str, Contrast] | None:
    """``'107_t2_SPACE'`` -> ``('107', 't2_SPACE')``; ``None`` for names outside the SPIDER pattern."""
    match = _CASE_NAME.match(name)
    return (match["patient"], match["contrast"]) if match else None


def contrasts_of(contrast_set: ContrastSet, *, include_t2_space: bool = True) -> tuple[Contrast, ...]:
    """Series contrasts in a contrast set; T2w includes the 3D ``t2_SPACE`` series unless told otherwise."""
    if contrast_set not in CONTRAST_SETS:
        raise ValueError(f"contrast set must be one of {CONTRAST_SETS}, got {contrast_set!r}")
    t2: tuple[Contrast, ...] = ("t2", "t2_SPACE") if include_t2_space else ("t2",)
    return {"T1w": ("t1",), "T2w": t2, "T1w+T2w": ("t1", *t2)}[contrast_set]


def find_cases(
    root: str | Path,
    *,
    contrast_set: ContrastSet = "T1w+T2w",
    include_t2_space: bool = True,
    require_masks: bool = True,
) -> list[SpiderCase]:
    """List the SPIDER series of a folder with ``images/`` and ``masks/``, sorted by patient then contrast.

    Raises:
        MissingInputError: ``root`` or ``root/images`` is missing.
        InputError: no series of the contrast set, or (with ``require_masks``) an image without a mask.
    """
    root = Path(root)
    if not root.exists():
        raise MissingInputError(root, "data folder")
    images = root / "images"
    if not images.is_dir():
        raise InputError(root, "not a SPIDER folder (no images/ subfolder)")
    wanted = set(contrasts_of(contrast_set, include_t2_space=include_t2_space))
    cases: list[SpiderCase] = []
    for image_path in images.iterdir():
        if not image_path.name.endswith(".mha"):
            continue
        parsed = parse_case_name(image_path.name[: -len(".mha")])
        if parsed is None or parsed[1] not in wanted:
            continue
        mask_path = root / "masks" / image_path.name
        if not mask_path.exists():
            if require_masks:
                raise InputError(mask_path, f"mask missing for image {image_path.name}")
            mask_path = None
        cases.append(SpiderCase(image_path.name[: -len(".mha")], parsed[0], parsed[1], image_path, mask_path))
    if not cases:
        raise InputError(
            images, f"no SPIDER series of contrast set {contrast_set} ({', '.join(sorted(wanted))})"
        )
    order = {"t1": 0, "t2": 1, "t2_SPACE": 2}
    return sorted(cases, key=lambda c: (int(c.patient_id), order[c.contrast]))


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise MissingInputError(path, "CSV file")
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def pathology_flags(gradings_csv: str | Path) -> dict[str, dict[str, bool]]:
    """Per-patient pathology flags from SPIDER's ``radiological_gradings.csv`` (rule: module docstring).

    Returns:
        ``{patient_id: {pathology: present}}`` for every patient in the file, pathologies as ``PATHOLOGIES``.
    """
    path = Path(gradings_csv)
    columns = {
        "modic": "Modic",
        "upper_endplate": "UP endplate",
        "lower_endplate": "LOW endplate",
        "spondylolisthesis": "Spondylolisthesis",
        "disc_herniation": "Disc herniation",
        "disc_narrowing": "Disc narrowing",
        "disc_bulging": "Disc bulging",
    }
    flags: dict[str, dict[str, bool]] = {}
    for line, row in enumerate(_read_csv(path), start=2):
        try:
            patient = str(int(row["Patient"]))
            grades = {name: int(float(row[column])) for name, column in columns.items()}
            pfirrmann = int(float(row["Pfirrman grade"]))
        except (KeyError, ValueError) as err:
            raise InputError(path, f"line {line}: cannot read gradings ({err})") from err
        patient_flags = flags.setdefault(patient, dict.fromkeys(PATHOLOGIES, False))
        for name, grade in grades.items():
            patient_flags[name] |= grade > 0
        patient_flags["degeneration"] |= pfirrmann >= DEGENERATION_MIN_PFIRRMANN
    return flags


def series_overview(overview_csv: str | Path) -> dict[str, dict[str, str]]:
    """SPIDER's ``overview.csv`` keyed by series name (``new_file_name``, for example ``107_t2_SPACE``)."""
    return {row["new_file_name"]: row for row in _read_csv(Path(overview_csv))}


def join_metadata(cases: Iterable[SpiderCase], metadata_dir: str | Path) -> list[dict[str, object]]:
    """One row per case: id, patient, contrast, sex, scanner fields and the patient's pathology flags.

    ``metadata_dir`` holds ``overview.csv`` and ``radiological_gradings.csv``; patients absent from the
    gradings get ``None`` flags.
    """
    metadata_dir = Path(metadata_dir)
    overview = series_overview(metadata_dir / "overview.csv")
    flags = pathology_flags(metadata_dir / "radiological_gradings.csv")
    rows: list[dict[str, object]] = []
    for case in cases:
        series = overview.get(case.case_id, {})
        row: dict[str, object] = {
            "case": case.case_id,
            "patient": case.patient_id,
            "contrast": case.contrast,
            "sex": series.get("sex", "").strip() or None,
            "manufacturer": series.get("Manufacturer") or None,
            "field_strength_t": float(series["MagneticFieldStrength"])
            if series.get("MagneticFieldStrength")
            else None,
        }
        patient_flags = flags.get(case.patient_id)
        for name in PATHOLOGIES:
            row[name] = None if patient_flags is None else patient_flags[name]
        rows.append(row)
    return rows
