"""Results folders for the review page's tests (tests/test_review.py, tests/test_review_browser.py), written
directly (phantom scan, label map, uncertainty map, report) where a test is about the page, not about predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from spinesegdiff.data.io import write_image
from spinesegdiff.data.phantom import Phantom, make_phantom

SHAPE = (3, 64, 48)
"""``(slices, rows, cols)`` of the phantoms: 3 sagittal slices of 64 x 48 pixels (direction PIR, as SPIDER)."""
SPACING = (1.5, 1.25, 3.0)
"""ITK spacing ``(col, row, slice)``: non-square pixels, so the page's aspect handling is tested."""


def uncertainty_field(phantom: Phantom, slices: list[int]) -> np.ndarray:
    """A known uncertainty map: in the segmented slices, rising from 0 (first column) to 1 (last column)."""
    _, n_rows, n_cols = phantom.labels.shape
    field = np.zeros(phantom.labels.shape, dtype=np.float32)
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, n_cols, dtype=np.float32), (n_rows, n_cols))
    for k in slices:
        field[k] = ramp
    return field


def write_result(folder: Path, stem: str, *, seed: int = 0, uncertainty_mean: float | None = 0.05,
                 score: float | None = None, verdict: str = "ok", volume: bool = False, image: str = "beside",
                 suffix: str = ".mha", extra: dict[str, Any] | None = None) -> Phantom:
    """Write the four outputs of one scan into ``folder`` as ``spinesegdiff predict`` names them, and the scan.

    Args:
        image: where the scan goes and how the report names it: ``beside`` (``scans/<stem>.mha`` in ``folder``,
            recorded relative to ``folder``), ``absolute`` (recorded by its absolute path), ``missing`` (recorded
            but not written).
        volume: every slice segmented (``--volume``), else the central one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(shape=SHAPE, spacing=SPACING, seed=seed, num_vertebrae=4)
    slices = list(range(SHAPE[0])) if volume else [SHAPE[0] // 2]
    labels = np.zeros_like(phantom.labels)
    labels[slices] = phantom.labels[slices]
    scan = folder / "scans" / f"{stem}.mha"
    if image in ("beside", "absolute"):
        scan.parent.mkdir(exist_ok=True)
        write_image(scan, (phantom.image * 1000).astype(np.int16), phantom.geometry)
    uncertainty_suffix = ".nrrd" if suffix == ".seg.nrrd" else suffix
    outputs = {"segmentation": f"{stem}_seg{suffix}", "uncertainty": f"{stem}_uncertainty{uncertainty_suffix}",
               "overlay": f"{stem}_overlay.png", "report": f"{stem}.json"}
    if suffix == ".seg.nrrd":
        from spinesegdiff.data.slicer import write_slicer_segmentation

        write_slicer_segmentation(folder / outputs["segmentation"], labels, phantom.geometry)
    else:
        write_image(folder / outputs["segmentation"], labels, phantom.geometry)
    write_image(folder / outputs["uncertainty"], uncertainty_field(phantom, slices), phantom.geometry)
    unit = "volume_mm3" if volume else "area_mm2"
    structures: dict[str, Any] = {
        a: {"name": n, "pixels": int((labels == k).sum()), unit: float((labels == k).sum() * 1.875),
            "uncertainty_mean": 0.1 * k, "uncertainty_max": 0.5}
        for k, (a, n) in enumerate((("SC", "spinal canal"), ("VB", "vertebra"), ("IVD", "intervertebral disc")), 1)}
    structures["overall_uncertainty_mean"] = uncertainty_mean
    quality: dict[str, Any] = {"verdict": verdict, "reasons": [] if verdict == "ok" else ["too few discs"],
                               "measures": {"discs": 3}}
    if score is not None:
        quality["score"] = score
    report = {"input": str(scan if image == "absolute" else Path("scans") / scan.name), "outputs": outputs,
              "mode": "volume" if volume else "central slice", "sagittal_slices": slices,
              "structures": structures, "quality": quality,
              "citation": "SPIDER: van der Graaf et al., Scientific Data 11:264 (2024), CC BY 4.0", **(extra or {})}
    (folder / outputs["report"]).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return phantom


SERIES = {"uid": "1.2.3.4", "number": 3, "description": "t2_tse_sag", "plane": "sagittal", "weighting": "T2",
          "chosen_by": "rule", "reason": "sagittal T2, preferred among 4 image series", "others": []}
"""The ``series`` entry of a report of a DICOM folder holding several series (``calm``'s)."""


def write_cohort(folder: Path) -> dict[str, Phantom]:
    """Five cases: uncertainties 0.02, 0.31, 0.07 (volume, 3 slices), 0.12 (scan missing), 0.19 (doubtful)."""
    return {
        "calm": write_result(folder, "calm", seed=1, uncertainty_mean=0.02, extra={"series": SERIES}),
        "worst": write_result(folder, "worst", seed=2, uncertainty_mean=0.31),
        "stack": write_result(folder, "stack", seed=3, uncertainty_mean=0.07, volume=True),
        "lost": write_result(folder, "lost", seed=4, uncertainty_mean=0.12, image="missing"),
        "odd": write_result(folder, "odd", seed=5, uncertainty_mean=0.19, verdict="doubtful", extra=level_report(5)),
    }


def level_report(seed: int) -> dict[str, Any]:
    """The ``levels``, ``discs`` and ``vertebrae`` entries ``predict`` writes, made by the real
    :func:`~spinesegdiff.anatomy.scan_levels` on the central slice of :func:`write_result`'s phantom of ``seed``
    (the lowest disc is cut by the image edge: the naming is doubtful, and the cut discs partial)."""
    from spinesegdiff.anatomy import scan_levels
    from spinesegdiff.data.preprocess import plan_grid

    phantom = make_phantom(shape=SHAPE, spacing=SPACING, seed=seed, num_vertebrae=4)
    central = SHAPE[0] // 2
    report = scan_levels(phantom.labels, plan_grid(phantom.labels.shape, phantom.geometry), [central],
                         image_zyx=phantom.image, uncertainty_zyx=uncertainty_field(phantom, [central]))
    return json.loads(json.dumps(report.to_dict()))
