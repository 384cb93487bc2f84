"""A cache of model-ready slices: two stacked ``uint8`` arrays and a JSON manifest.

Layout of a cache folder::

    images.npy     (N, 320, 320) uint8, intensities 0..255 (98th-percentile scaled)
    labels.npy     (N, 320, 320) uint8, classes 0..3
    manifest.json  settings, and per slice: case, patient, contrast, sagittal index, oblique angle, and the
                   native <-> model grid (:class:`spinesegdiff.data.preprocess.SagittalGrid`) of its scan

The arrays are memory-mapped on reading, so a training loop indexes them at the speed of RAM. A cache is
built in a temporary sibling folder and renamed into place: an interrupted build leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from spinesegdiff.data.io import check_same_grid, read_image
from spinesegdiff.data.labels import to_classes
from spinesegdiff.data.preprocess import SagittalGrid, prepare_scan
from spinesegdiff.data.spider import ContrastSet, SpiderCase, find_cases
from spinesegdiff.errors import InputError, MissingInputError

CACHE_VERSION = 2
CACHE_FORMAT = "spinesegdiff-slice-cache"
"""The marker in every manifest this package writes: only a folder that carries it is ever replaced."""
DEFAULT_OBLIQUE_DEG = 10.0
"""Series whose slice normal is further than this from left-right are flagged oblique (excluded from evaluation)."""


@dataclass(frozen=True)
class SliceEntry:
    """One row of the manifest: which scan and slice a cached array index came from."""

    case: str
    patient: str
    contrast: str
    slice_index: int
    central: bool
    oblique: bool
    oblique_deg: float
    image_path: str
    mask_path: str | None


@dataclass
class SliceCache:
    """A loaded cache: ``images[i]`` and ``labels[i]`` belong to ``entries[i]``."""

    root: Path
    images: np.ndarray
    labels: np.ndarray
    entries: list[SliceEntry]
    grids: dict[str, SagittalGrid]
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def indices(
        self,
        *,
        cases: Sequence[str] | None = None,
        patients: Sequence[str] | None = None,
        central_only: bool = False,
        exclude_oblique: bool = False,
    ) -> list[int]:
        """Array indices of the slices that pass every given filter."""
        case_set = None if cases is None else set(cases)
        patient_set = None if patients is None else set(patients)
        return [
            i
            for i, e in enumerate(self.entries)
            if (case_set is None or e.case in case_set)
            and (patient_set is None or e.patient in patient_set)
            and (not central_only or e.central)
            and (not exclude_oblique or not e.oblique)
        ]

    @property
    def case_names(self) -> list[str]:
        return sorted({e.case for e in self.entries})


def preprocess_case(
    case: SpiderCase,
    *,
    slices: Literal["central", "all"] = "central",
    partial_vertebrae_as_vertebra: bool = True,
):
    """Read, check and preprocess one SPIDER series (image and mask) -> :class:`PreparedScan`."""
    image = read_image(case.image_path)
    classes = None
    if case.mask_path is not None:
        mask = read_image(case.mask_path)
        check_same_grid(case.image_path, image, case.mask_path, mask)
        classes = to_classes(
            mask[0], partial_vertebrae_as_vertebra=partial_vertebrae_as_vertebra, source=case.mask_path
        )
    return prepare_scan(image[0], image[1], classes_zyx=classes, slices=slices, source=case.image_path)


def build_cache(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    contrast_set: ContrastSet = "T1w+T2w",
    include_t2_space: bool = True,
    slices: Literal["central", "all"] = "central",
    partial_vertebrae_as_vertebra: bool = True,
    oblique_deg: float = DEFAULT_OBLIQUE_DEG,
    progress: bool = True,
) -> SliceCache:
    """Preprocess every series of a SPIDER folder into a cache at ``out_dir`` (replacing an older cache).

    Raises:
        MissingInputError, InputError: as raised for the first bad series; nothing is written then.
    """
    from tqdm.auto import tqdm

    cases = find_cases(data_dir, contrast_set=contrast_set, include_t2_space=include_t2_space)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not is_cache_folder(out_dir))):
        raise InputError(out_dir, "exists and is not a cache this package wrote (no spinesegdiff cache marker in "
                                  "manifest.json); choose an empty or new folder")
    images, labels, entries, grids = [], [], [], {}
    for case in tqdm(cases, desc="preprocess", unit="scan", disable=not progress):
        prepared = preprocess_case(
            case, slices=slices, partial_vertebrae_as_vertebra=partial_vertebrae_as_vertebra
        )
        grids[case.case_id] = prepared.grid
        for k, index in enumerate(prepared.indices):
            images.append(prepared.images[k])
            labels.append(prepared.labels[k])
            entries.append(
                SliceEntry(
                    case=case.case_id,
                    patient=case.patient_id,
                    contrast=case.contrast,
                    slice_index=index,
                    central=index == prepared.grid.central_index,
                    oblique=prepared.grid.oblique_deg > oblique_deg,
                    oblique_deg=round(prepared.grid.oblique_deg, 3),
                    image_path=str(case.image_path),
                    mask_path=None if case.mask_path is None else str(case.mask_path),
                )
            )
    settings = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "data_dir": str(Path(data_dir).resolve()),
        "contrast_set": contrast_set,
        "include_t2_space": include_t2_space,
        "slices": slices,
        "partial_vertebrae_as_vertebra": partial_vertebrae_as_vertebra,
        "oblique_deg": oblique_deg,
        "intensity": "clip(x / p98, 0, 1) * 255 as uint8; network input = value / 127.5 - 1",
        "model_grid": "320 x 320 at 1 mm; rows superior->inferior, columns anterior->posterior",
    }
    manifest = {
        "settings": settings,
        "slices": [vars(e) for e in entries],
        "grids": {case_id: grid.to_dict() for case_id, grid in grids.items()},
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        np.save(staging / "images.npy", np.stack(images))
        np.save(staging / "labels.npy", np.stack(labels))
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if out_dir.exists():  # a cache of ours (checked above) or an empty folder
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_cache(out_dir)


def is_cache_folder(path: str | Path) -> bool:
    """Whether ``path`` is a cache folder this package wrote: its manifest carries :data:`CACHE_FORMAT`."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        settings = json.loads(manifest.read_text(encoding="utf-8")).get("settings", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
        return False
    return isinstance(settings, dict) and settings.get("format") == CACHE_FORMAT


def load_cache(root: str | Path, *, mmap: bool = True) -> SliceCache:
    """Open a cache folder written by :func:`build_cache`.

    Raises:
        MissingInputError, InputError: missing folder, or a folder that is not a cache of this version.
    """
    root = Path(root)
    if not root.exists():
        raise MissingInputError(root, "cache folder")
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise InputError(
            root, "not a spinesegdiff cache (no manifest.json); run `spinesegdiff preprocess` first"
        )
    if not is_cache_folder(root):
        raise InputError(root, "manifest.json is not a spinesegdiff cache manifest; run `spinesegdiff preprocess`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("settings", {}).get("version") != CACHE_VERSION:
        raise InputError(
            root, f"cache version {manifest.get('settings', {}).get('version')} is not {CACHE_VERSION}"
        )
    mode = "r" if mmap else None
    images = np.load(root / "images.npy", mmap_mode=mode)
    labels = np.load(root / "labels.npy", mmap_mode=mode)
    entries = [SliceEntry(**row) for row in manifest["slices"]]
    if not (len(images) == len(labels) == len(entries)):
        raise InputError(root, "cache arrays and manifest disagree in length")
    grids = {case_id: SagittalGrid.from_dict(data) for case_id, data in manifest["grids"].items()}
    return SliceCache(
        root=root, images=images, labels=labels, entries=entries, grids=grids, settings=manifest["settings"]
    )
