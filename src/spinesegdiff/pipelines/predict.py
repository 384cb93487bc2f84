"""Segment a user's scan: read, preprocess, sample, put the result back on the scan's own grid, write outputs.

:func:`segment` is the Python API for one scan; :func:`predict_scans` (one scan, a DICOM folder or a folder of
scans, written to an output folder) is what ``spinesegdiff predict`` runs, :func:`run_demo` what ``demo`` runs::

    from spinesegdiff import segment
    result = segment("scan.nii.gz")             # the shipped model, central sagittal slice, CPU or GPU
    result.labels                               # (z, y, x) uint8 on the scan's grid, 0 bg 1 SC 2 VB 3 IVD
    result.uncertainty                          # (z, y, x) float32 in [0, 1]
    write_outputs(result, "out/")               # scan_seg.nii.gz, scan_uncertainty.nii.gz, scan_overlay.png, scan.json
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from spinesegdiff.anatomy import LevelReport, scan_levels
from spinesegdiff.anatomy.measures import CONTRASTS
from spinesegdiff.data.dicom_seg import DICOM_SEG_SUFFIX, write_dicom_segmentation
from spinesegdiff.data.dicom_series import SeriesChoice, choose_series
from spinesegdiff.data.io import Geometry, image_stem, image_suffix, read_image, write_image
from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS, STRUCTURE_NAMES
from spinesegdiff.data.preprocess import (
    PreparedScan,
    field_of_view_mask,
    native_slice,
    plan_grid,
    prepare_scan,
    restore_probabilities,
    slices_to_volume,
)
from spinesegdiff.data.slicer import SEGMENTATION_SUFFIX, write_slicer_segmentation
from spinesegdiff.errors import InputError, SpineSegDiffError
from spinesegdiff.files import recover_staging
from spinesegdiff.pipelines.checks import (
    QualityWarning,
    check_contrast,
    check_slice_signal,
    check_spine_quality,
    spine_quality,
    warn_doubtful,
)
from spinesegdiff.pipelines.cluster import RayEngine
from spinesegdiff.pipelines.inputs import (
    PlannedScan,
    ScanInputs,
    Shard,
    Skipped,
    check_output_folder,
    checked_image,
    complete_outputs,
    parse_shard,
    plan_outputs,
    scan_inputs,
    scan_list_inputs,
    select_shard,
)
from spinesegdiff.pipelines.label_convention import spider_label_map, spider_value_names
from spinesegdiff.pipelines.midline import SliceChoice, candidate_slices, choose_slice
from spinesegdiff.pipelines.overlay import render_overlay
from spinesegdiff.pipelines.plausibility import plausible_probabilities
from spinesegdiff.pipelines.presegmenters import resolve_presegmenter
from spinesegdiff.pipelines.publish import staged_outputs, strict_json
from spinesegdiff.pipelines.quality_score import quality_score
from spinesegdiff.pipelines.read_ahead import read_ahead
from spinesegdiff.pipelines.results import cleared_outside
from spinesegdiff.pipelines.segmenter import Segmenter, SliceSegmentation
from spinesegdiff.pipelines.settings import (
    INSTANCE_FREE_FORMATS,
    LABEL_CONVENTIONS,
    OUTPUT_FORMATS,
    SamplerSettings,
    format_suffix,
    uncertainty_suffix,
)
from spinesegdiff.pipelines.summary import check_summary, summary_path, summary_row, write_summary
from spinesegdiff.pipelines.tiling import (
    model_grid_summary,
    presegment_canvas,
    segment_canvas,
    spine_region_of_labels,
)
from spinesegdiff.pipelines.write_behind import WriteBehind

MIN_FIELD_OF_VIEW_MM = {"superior-inferior": 60.0, "anterior-posterior": 40.0}
"""A sagittal slice smaller than this cannot hold even two lumbar levels: refused."""


@dataclass
class ScanSegmentation:
    """The segmentation of one scan.

    Attributes:
        source: the input path (``None`` for an in-memory array).
        stem: output file stem (input name without extensions).
        image: the input intensities ``(z, y, x)`` as read.
        labels: ``(z, y, x)`` uint8 classes on the input grid; slices not segmented are 0.
        uncertainty: ``(z, y, x)`` float32 entropy heatmap in [0, 1] on the input grid.
        geometry: the input geometry (outputs are written with it).
        prepared: the model-grid slices and the native <-> model mapping.
        model_grid: the sampler's model-grid output for the segmented slices.
        timings: seconds per stage.
        settings: model and sampler description for the report.
        quality: does the central segmented slice look like a lumbar spine:
            ``{"verdict": "ok" | "doubtful", "reasons": [...], "measures": {...}}``
            (:func:`~spinesegdiff.pipelines.checks.spine_quality`; implausible results are refused).
        levels: the levels named and measured on the mid-sagittal slice (:func:`~spinesegdiff.anatomy.scan_levels`),
            filled by :func:`write_outputs` when ``None``.
    """

    source: Path | None
    stem: str
    image: np.ndarray
    labels: np.ndarray
    uncertainty: np.ndarray
    geometry: Geometry
    prepared: PreparedScan
    model_grid: SliceSegmentation
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    levels: LevelReport | None = None

    def statistics(self) -> dict[str, Any]:
        """Per structure: area (mm^2, central-slice mode) or volume (mm^3), mean and max uncertainty."""
        spacing = self.geometry.spacing
        voxel = float(np.prod(spacing))
        sagittal = self.prepared.grid.ras_spacing[0]
        single = len(self.prepared.indices) == 1
        stats: dict[str, Any] = {}
        for k, (name, abbreviation) in enumerate(zip(STRUCTURE_NAMES, STRUCTURE_ABBREVIATIONS, strict=True)):
            inside = self.labels == k + 1
            count = int(inside.sum())
            entry: dict[str, Any] = {"name": name, "pixels": count}
            if single:
                entry["area_mm2"] = round(count * voxel / sagittal, 2)
            else:
                entry["volume_mm3"] = round(count * voxel, 2)
            values = self.uncertainty[inside]
            entry["uncertainty_mean"] = round(float(values.mean()), 4) if count else None
            entry["uncertainty_max"] = round(float(values.max()), 4) if count else None
            stats[abbreviation] = entry
        grid = self.prepared.grid
        planes = np.ones((len(self.prepared.indices), grid.rows.native_size, grid.cols.native_size), dtype=bool)
        covered = slices_to_volume(planes, self.prepared.indices, grid)
        stats["overall_uncertainty_mean"] = round(float(self.uncertainty[covered].mean()), 4)
        return stats


def check_field_of_view(prepared: PreparedScan, source: str | Path | None) -> None:
    """Refuse slices too small to hold a lumbar spine (see :data:`MIN_FIELD_OF_VIEW_MM`)."""
    extents = {"superior-inferior": prepared.grid.rows.field_of_view_mm,
               "anterior-posterior": prepared.grid.cols.field_of_view_mm}
    for axis, extent in extents.items():
        if extent < MIN_FIELD_OF_VIEW_MM[axis]:
            raise InputError(source, f"image is too small to hold a lumbar spine ({extent:.0f} mm {axis}, "
                                     f"at least {MIN_FIELD_OF_VIEW_MM[axis]:.0f} mm needed)")


@dataclass
class LoadedScan:
    """A scan read, checked and preprocessed, ready for a :class:`Segmenter` (see :func:`load_scan`)."""

    source: Path | None
    stem: str
    image: np.ndarray
    geometry: Geometry
    prepared: PreparedScan
    timings: dict[str, float]
    slice_choice: SliceChoice | None = None
    series_choice: SeriesChoice | None = None
    """The series read from a DICOM folder and why (:func:`~spinesegdiff.data.dicom_series.choose_series`)."""
    candidates: PreparedScan | None = None
    """The candidate slices of the mid-sagittal choice (:func:`~spinesegdiff.pipelines.midline.candidate_slices`),
    prepared with the scan when the slice is to be chosen by anatomy (``prepared`` is then the central one)."""


def load_scan(image: str | Path | tuple[np.ndarray, Geometry], *, volume: bool = False,
              slice_index: int | str | None = None, series: str | None = None) -> LoadedScan:
    """Read and preprocess a scan, refusing what the model cannot segment.

    Args:
        image: a path (.mha, .nii(.gz), .nrrd, DICOM folder) or ``(array_zyx, geometry)``.
        volume: every sagittal slice instead of the central one.
        slice_index: the sagittal slice to segment (0-based, along the left-right axis of the RAS+ reoriented
            scan; ``"centre"``: the central one) instead of the one :func:`segment_loaded` chooses by anatomy;
            refused with ``volume``.
        series: for a DICOM folder of several series, the one to read (its UID, number or words of its
            description) instead of the preferred one (:func:`~spinesegdiff.data.dicom_series.choose_series`:
            sagittal, T2-weighted); the report's ``series`` says which was read and why. Files ignore it.

    Raises:
        MissingInputError, InputError: unreadable, truncated, non-3D, axial/coronal, too small, NaN or constant
            input, a central sagittal slice that is blank, mostly empty or noise, or a ``series`` that names
            none or several of the folder's series.
    """
    image = checked_image(image)  # a path or (array_zyx, Geometry), else TypeError / InputError
    started = time.perf_counter()
    series_choice = None
    if isinstance(image, tuple):
        array, geometry = image
        source, stem = None, "scan"
    else:
        source = Path(image)
        if source.is_dir():  # the folder is searched once: the series chosen is the one read
            series_choice = choose_series(source, series)
        array, geometry = read_image(source, series=series_choice.series if series_choice else series)
        stem = image_stem(source)
    read_seconds = time.perf_counter() - started
    mark = time.perf_counter()
    grid = plan_grid(array.shape, geometry)
    choice = _first_choice(grid, volume, slice_index, source)
    candidates = None
    if choice is not None and choice.chosen_by == "centre":  # the candidates of the choice by anatomy, at once
        candidates = prepare_scan(array, geometry, slices=candidate_slices(grid), source=source,
                                  cover_field_of_view=True)
        prepared = _only(candidates, choice.index)
    else:
        prepared = prepare_scan(array, geometry, slices="all" if volume else [choice.index], source=source,
                                cover_field_of_view=True)
    check_field_of_view(prepared, source)
    central = prepared.grid.central_index if choice is None else choice.index
    check_slice_signal(native_slice(array, prepared.grid, central), central, source)
    timings = {"read_s": read_seconds, "preprocess_s": time.perf_counter() - mark}
    return LoadedScan(source=source, stem=stem, image=array, geometry=geometry, prepared=prepared, timings=timings,
                      slice_choice=choice, series_choice=series_choice, candidates=candidates)


def _only(prepared: PreparedScan, index: int) -> PreparedScan:
    """The slice of sagittal index ``index`` of ``prepared`` (one of its slices)."""
    k = prepared.indices.index(index)
    labels = None if prepared.labels is None else prepared.labels[k:k + 1]
    return dataclasses.replace(prepared, images=prepared.images[k:k + 1], indices=[index], labels=labels)


def _first_choice(grid, volume: bool, slice_index: int | str | None, source: Path | None) -> SliceChoice | None:
    """The user's slice, the only slice of a one-slice scan, or the centre until :func:`segment_loaded` looks at
    the anatomy; ``None`` for a volume."""
    if volume:
        if slice_index is not None:
            raise SpineSegDiffError("--slice names one slice; --volume segments them all: choose one of the two")
        return None
    if slice_index is None and grid.num_sagittal == 1:  # nothing to choose, and nothing known of where it lies
        return SliceChoice(0, "only", "the scan has a single sagittal slice; whether it is the mid-sagittal plane "
                                      "is not known")
    if slice_index is None:
        return SliceChoice(grid.central_index, "centre", "the central sagittal slice of the series")
    if slice_index in ("centre", "center"):
        return SliceChoice(grid.central_index, "user", f"--slice {slice_index}: the central sagittal slice")
    if not 0 <= slice_index < grid.num_sagittal:
        raise InputError(source, f"--slice {slice_index}: the scan has {grid.num_sagittal} sagittal slices "
                                 f"(0..{grid.num_sagittal - 1})")
    return SliceChoice(slice_index, "user", f"--slice {slice_index}")


def segment_loaded(scan: LoadedScan, segmenter: Segmenter, *, keep_all_parts: bool = False,
                   progress: bool | None = None) -> ScanSegmentation:
    """Sample the model-grid slices of a loaded scan and put the result back on its own grid.

    ``progress``: a progress bar per slice on stderr for a volume (``None``: unless the segmenter was loaded
    ``quiet``); the JSON timings hold ``sample_s_per_slice``.

    Parts that cannot belong to the spine (far from the column, a canal in front of it, tiny fragments) are
    removed (:mod:`~spinesegdiff.pipelines.plausibility`) unless ``keep_all_parts``; what was removed is
    reported under ``settings["plausibility"]``. The central segmented slice is judged by
    :func:`~spinesegdiff.pipelines.checks.spine_quality`: a doubtful result is returned with a
    :class:`~spinesegdiff.pipelines.checks.QualityWarning`, an implausible one (no spine) raises
    :class:`InputError`.
    """
    timings = dict(scan.timings)
    choice = scan.slice_choice
    if choice is not None and choice.chosen_by == "centre" and segmenter.presegmenter is not None:
        mark = time.perf_counter()
        scan, choice = _at_midline(scan, segmenter.presegmenter)
        timings["midline_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    result = _sample_slices(scan.prepared.images, segmenter, progress)
    result = cleared_outside(result, field_of_view_mask(scan.prepared.grid))  # padding is not the scan
    timings["sample_s"] = time.perf_counter() - mark
    timings["sample_s_per_slice"] = timings["sample_s"] / len(scan.prepared.images)  # not summed: no "_s" ending
    cleanup = None
    if not keep_all_parts:
        probabilities, kept, cleanup = plausible_probabilities(result.class_probabilities, result.labels)
        result = dataclasses.replace(result, class_probabilities=probabilities, labels=kept)
    mark = time.perf_counter()
    prepared, grid = scan.prepared, scan.prepared.grid
    labels_2d = np.stack([restore_probabilities(p, grid).argmax(axis=0).astype(np.uint8)
                          for p in result.class_probabilities])
    uncertainty_2d = np.stack(
        [restore_probabilities(u[None], grid, background_channel=None)[0] for u in result.uncertainty]
    ).astype(np.float32)
    labels = slices_to_volume(labels_2d, prepared.indices, grid)
    uncertainty = slices_to_volume(uncertainty_2d, prepared.indices, grid)
    timings["restore_s"] = time.perf_counter() - mark
    timings["slices"] = len(prepared.indices)
    central = min(range(len(prepared.indices)), key=lambda k: abs(prepared.indices[k] - grid.central_index))
    quality = spine_quality(result.labels[central])
    check_spine_quality(quality, scan.source)
    quality.update(quality_score(result.labels[central], result.uncertainty[central],
                                 removed_mm2=cleanup.per_slice_mm2[central] if cleanup else 0.0,
                                 verdict=quality["verdict"]))
    # judged on the segmented canal and vertebrae: only where they look like a spine
    quality["contrast"] = (check_contrast(result.labels[central], prepared.images[central], scan.source)
                           if quality["verdict"] == "ok" else CONTRASTS[None])
    model_grid = model_grid_summary(grid)
    if model_grid["cropped"]:
        cut = [f"{axis.model_size * axis.model_spacing:.0f} mm of its {axis.field_of_view_mm:.0f} mm {name}"
               for name, axis in (("superior-inferior", grid.rows), ("anterior-posterior", grid.cols)) if axis.crops]
        warn_doubtful(scan.source, "the field of view is larger than the model grid can hold: only the central "
                                   f"{' and '.join(cut)} were segmented")
    described = {
        "model": segmenter.model_name,
        "variant": segmenter.model_config.variant,
        "device": str(segmenter.device),
        "mode": "volume" if choice is None else "central slice",  # the paper's 2D setting: one sagittal slice
        "slice": None if choice is None else choice.to_dict(),
        **({"series": scan.series_choice.to_dict()} if scan.series_choice is not None else {}),
        "sampler": segmenter.describe(),
        "model_grid": model_grid,
        "plausibility": "off (--keep-all-parts)" if cleanup is None else cleanup.to_dict(),
    }
    return ScanSegmentation(source=scan.source, stem=scan.stem, image=scan.image, labels=labels,
                            uncertainty=uncertainty, geometry=scan.geometry, prepared=prepared, model_grid=result,
                            timings=timings, settings=described, quality=quality)


def _sample_slices(images: np.ndarray, segmenter: Segmenter, progress: bool | None) -> SliceSegmentation:
    """``segmenter.segment(images)``, with a progress bar per slice when there are several and ``progress``."""
    if progress is None:
        progress = not getattr(segmenter, "quiet", True)
    presegmenter = segmenter.presegmenter
    if not progress or len(images) < 2:
        return segment_canvas(segmenter.segment, images, presegmenter=presegmenter)
    from tqdm.auto import tqdm

    with tqdm(total=len(images), desc="slices", unit="slice", leave=False) as bar:
        return segment_canvas(segmenter.segment, images, presegmenter=presegmenter, progress=bar.update)


def _at_midline(scan: LoadedScan, presegmenter) -> tuple[LoadedScan, SliceChoice]:
    """The scan prepared at its mid-sagittal slice, chosen on the presegmenter's labels of the candidates
    (:mod:`~spinesegdiff.pipelines.midline`)."""
    grid = scan.prepared.grid
    prepared = scan.candidates
    if prepared is None:  # a LoadedScan made without them
        prepared = prepare_scan(scan.image, scan.geometry, slices=candidate_slices(grid), source=scan.source,
                                cover_field_of_view=True)
    # the central candidate on the whole canvas; the others only around the spine it shows
    centre = prepared.indices.index(grid.central_index)
    outside = ~field_of_view_mask(prepared.grid)  # what the presegmenter draws in the padding is not there
    central = presegment_canvas(presegmenter, prepared.images[centre:centre + 1]).argmax(axis=1)
    central[:, outside] = 0
    labels = central
    if len(prepared.images) > 1:
        others = presegment_canvas(presegmenter, np.delete(prepared.images, centre, axis=0),
                                   region=spine_region_of_labels(central)).argmax(axis=1)
        others[:, outside] = 0
        labels = np.insert(others, centre, central[0], axis=0)
    choice = choose_slice(prepared.indices, labels, grid.central_index)
    return dataclasses.replace(scan, prepared=_only(prepared, choice.index), slice_choice=choice), choice


def segment(
    image: str | Path | tuple[np.ndarray, Geometry],
    *,
    model: str | Path | None = None,
    device: str = "auto",
    settings: SamplerSettings | None = None,
    volume: bool = False,
    segmenter: Segmenter | None = None,
    quiet: bool = False,
    preseg: str | None = None,
    preseg_model: str | Path | None = None,
    keep_all_parts: bool = False,
    slice_index: int | str | None = None,
    series: str | None = None,
) -> ScanSegmentation:
    """Segment one scan: :func:`load_scan`, then :func:`segment_loaded`.

    Args:
        image: a path (.mha, .nii(.gz), .nrrd, DICOM folder) or ``(array_zyx, geometry)``.
        model: checkpoint file or run folder; ``None`` = the shipped model (the shipped refiner with a
            presegmenter).
        preseg: ``none``, ``unet`` or ``nnunet``; default ``unet`` (the shipped U-Net's mask refined from
            ``T_pre = 30``) when ``model`` is ``None``, else ``none`` (sampling from noise); see
            :func:`~spinesegdiff.pipelines.presegmenters.resolve_presegmenter`.
        preseg_model: the presegmenter's model (a U-Net run, or an nnU-Net 2d model folder); refused with
            ``preseg="none"``.
        device: ``auto``, ``cpu`` or ``cuda``.
        settings: sampler settings (by default S = 4 samples and one DDIM step refining a presegmentation from
            ``T_pre = 30``, S = 15 and K = Ts = 10 from noise; :class:`SamplerSettings`).
        volume: segment every sagittal slice instead of the central one.
        segmenter: a ready :class:`Segmenter` (``model``, ``device`` and ``settings`` are then ignored).
        quiet: do not say so when ``auto`` falls back to the CPU.
        keep_all_parts: keep parts that cannot belong to the spine (see :func:`segment_loaded`).
        slice_index: the sagittal slice to segment, or ``"centre"`` (default: chosen by anatomy, see
            :func:`load_scan` and :mod:`~spinesegdiff.pipelines.midline`).
        series: the series to read from a DICOM folder of several (see :func:`load_scan`).

    Raises:
        MissingInputError, InputError: unreadable, non-3D, axial/coronal, too small, NaN or constant input,
            or a model file that is not ours.
        SpineSegDiffError: a presegmenter model or ``T_pre`` without a presegmenter.
    """
    scan = load_scan(image, volume=volume, slice_index=slice_index, series=series)
    if segmenter is None:
        mark = time.perf_counter()
        presegmenter = resolve_presegmenter(preseg, preseg_model, user_model=model is not None,
                                            preseg_steps=settings.preseg_steps if settings else None, device=device)
        segmenter = Segmenter.from_checkpoint(model, device=device, settings=settings, quiet=quiet,
                                              presegmenter=presegmenter)
        scan.timings["load_model_s"] = time.perf_counter() - mark
    return segment_loaded(scan, segmenter, keep_all_parts=keep_all_parts)


@dataclass(frozen=True)
class ScanOutcome:
    """What became of one scan of :func:`predict_scans`: its written files, or the one-line error.

    Attributes:
        scan: the input scan.
        index: its position among the ``total`` scans (0-based).
        total: the number of scans of the run.
        paths: the written files (``segmentation``, ``uncertainty``, ``overlay``, ``report``), ``None`` on error.
        seconds: read, preprocess, sample, restore and write time of the scan (model loading excluded).
        error: the problem (``"<file>: <problem>"``), ``None`` on success.
        note: why an input was left out (``"<file>: skipped: a label map ..."``); ``None`` for a scan.
        warning: why a written result is doubtful (``"<file>: ..."``, see
            :func:`~spinesegdiff.pipelines.checks.spine_quality`); ``None`` when it looks like a lumbar spine.
    """

    scan: Path
    index: int
    total: int
    paths: dict[str, Path] | None = None
    seconds: float = 0.0
    error: str | None = None
    note: str | None = None
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def predict_scans(
    input: str | Path | None,
    output: str | Path,
    *,
    model: str | Path | None = None,
    device: str = "auto",
    settings: SamplerSettings | None = None,
    preseg: str | None = None,
    preseg_model: str | Path | None = None,
    volume: bool = False,
    output_format: str | None = None,
    quiet: bool = False,
    progress: bool = False,
    shard: Shard | str | None = None,
    skip_existing: bool = False,
    summary: bool | None = None,
    input_list: str | Path | None = None,
    where: dict[str, str] | None = None,
    engine: RayEngine | None = None,
    keep_all_parts: bool = False,
    slice_index: int | str | None = None,
    labels: str = "spinesegdiff",
    series: str | None = None,
) -> Iterator[ScanOutcome]:
    """Segment a scan, a DICOM series folder, a folder of scans or the scans of a list, and write each scan's
    outputs to ``output``.

    The inputs, the output folder, the output format and the presegmenter are checked, and every output named,
    before any work (errors raise here; see :mod:`spinesegdiff.pipelines.inputs`: an output never replaces an
    input, earlier outputs and label maps are left out, scans sharing a stem get distinct outputs). The inputs
    left out come first, one :class:`ScanOutcome` each with its ``note`` (or ``error``, for a broken link);
    the scans are then segmented one by one as the returned iterator is consumed, one :class:`ScanOutcome` each,
    in this process the next scan read and preprocessed in a background thread meanwhile (one scan ahead at
    most; :mod:`~spinesegdiff.pipelines.read_ahead`) and the previous one written in another
    (:mod:`~spinesegdiff.pipelines.write_behind`). A scan that cannot be read or segmented becomes an outcome
    with its error, in its place in the order, and the next one is tried; the model is loaded after the first
    readable scan, so a bad input is reported before a long load.

    Args:
        input: scan file, DICOM series folder, or folder of them (``None`` with ``input_list``).
        output: output folder (created).
        model, device, settings, preseg, preseg_model, volume, quiet, keep_all_parts, slice_index, series: as for
            :func:`segment` (``series`` applies to each DICOM folder; refused for a single scan file);
            ``labels``: ``spinesegdiff`` or ``spider`` (see :func:`write_outputs`).
        output_format: one of :data:`OUTPUT_FORMATS` (``nii.gz``, ``mha``, ``nrrd``, ``nii``, ``seg.nrrd``,
            ``dicom-seg``); default the input's own (DICOM: ``nii.gz``).
        progress: a progress bar on stderr when there is more than one scan.
        shard: ``"K/N"`` or a :class:`~spinesegdiff.pipelines.inputs.Shard`: only every N-th scan of the
            plan (name order for a folder, list order for a list), from the K-th
            (:func:`~spinesegdiff.pipelines.inputs.select_shard`).
        skip_existing: a scan whose output set is complete (:func:`~spinesegdiff.pipelines.inputs.complete_outputs`)
            is not segmented again: its outcome has ``paths`` and a ``note``.
        summary: write ``summary.csv`` (``summary-K-of-N.csv`` for a shard) into ``output``, one row per scan
            (:mod:`spinesegdiff.pipelines.summary`); ``None``: only for a cohort run (``shard`` or
            ``skip_existing``), so a plain run writes nothing but each scan's four files.
        input_list: a file naming the scans instead of ``input`` (one path per line, or a CSV with a ``path``
            column; :mod:`spinesegdiff.pipelines.input_list`).
        where: with a CSV ``input_list``, keep only the rows whose columns hold these values.
        engine: ``None`` segments in this process; a :class:`~spinesegdiff.pipelines.cluster.RayEngine` spreads
            the scans over Ray workers that each load the model once (same outputs for the same seed).

    Raises:
        MissingInputError, InputError, SpineSegDiffError: no scans, both or neither of ``input`` and
            ``input_list``, a bad output format, shard or presegmenter choice, a file named like the summary
            that is not one, Ray asked for but not installed or not reachable.
    """
    shard = parse_shard(shard) if isinstance(shard, str) else shard
    check_label_convention(labels, output_suffix(None, output_format) if output_format else None)
    if series is not None and input is not None and Path(input).is_file():
        raise InputError(input, "--series chooses among the series of a DICOM folder; this is a scan file")
    inputs, plan = _plan_scans(input, input_list, where, output, output_format, shard, series)
    table = _checked_summary(output, shard, summary if summary is not None else shard is not None or skip_existing)
    spec = SegmenterSpec(model=model, device=device, settings=settings, quiet=quiet, preseg=preseg,
                         preseg_model=preseg_model)
    work = ScanWork(output=Path(output), volume=volume, output_format=output_format,
                    total=len(inputs.skipped) + len(plan), keep_all_parts=keep_all_parts, slice_index=slice_index,
                    labels=labels, series=series)
    run_scans = _scan_runner(spec, work, engine)
    return _predict_each(plan, inputs.skipped, run_scans, progress=progress, skip_existing=skip_existing,
                         summary=table, summarise_left_out=shard is None or shard.index == 1)


def _checked_summary(output: str | Path, shard: Shard | None, wanted: bool) -> Path | None:
    """The summary file of the run (``None`` when not ``wanted``), refused before any work when a file of that
    name is not a summary."""
    table = summary_path(output, shard) if wanted else None
    if table is not None:
        check_summary(table)
    return table


def _scan_runner(spec: SegmenterSpec, work: ScanWork, engine: RayEngine | None) -> ScanRunner:
    """In this process (the presegmenter loaded now: a bad choice fails before any scan), or on Ray workers."""
    if engine is None:
        presegmenter = spec.presegmenter()
        return partial(_segment_in_process, partial(spec.load_with, presegmenter), work)
    from spinesegdiff.pipelines.cluster import ray_scan_runner

    spec.presegmenter()  # the same check before the workers start
    return ray_scan_runner(engine, spec, work)


def _plan_scans(input: str | Path | None, input_list: str | Path | None, where: dict[str, str] | None,
                output: str | Path, output_format: str | None, shard: Shard | None, series: str | None = None,
                ) -> tuple[ScanInputs, tuple[PlannedScan, ...]]:
    """The inputs found and the scans of this run (shard) with their outputs, all checked before any work."""
    output_suffix(None, output_format)  # refuse a bad format before any work
    if (input is None) == (input_list is None):
        raise SpineSegDiffError("name the scans with exactly one of an input (-i) and an input list (--input-list)")
    if where and input_list is None:
        raise SpineSegDiffError("--where filters the rows of an --input-list CSV: give one")
    check_output_folder(output)
    recover_staging(output)  # a set a killed run left without its JSON is finished before the inputs are read
    inputs = scan_inputs(input, series=series) if input_list is None else scan_list_inputs(input_list, where=where)
    plan = plan_outputs(inputs, output, suffix_of=lambda scan: output_suffix(scan, output_format))
    return inputs, select_shard(plan, shard)


@dataclass(frozen=True)
class SegmenterSpec:
    """How to load the :class:`Segmenter` of a run: what a worker process needs to load its own copy."""

    model: str | Path | None = None
    device: str = "auto"
    settings: SamplerSettings | None = None
    quiet: bool = False
    preseg: str | None = None
    preseg_model: str | Path | None = None

    def presegmenter(self):
        """The presegmenter (:func:`~spinesegdiff.pipelines.presegmenters.resolve_presegmenter`), or ``None``."""
        return resolve_presegmenter(self.preseg, self.preseg_model, user_model=self.model is not None,
                                    preseg_steps=self.settings.preseg_steps if self.settings else None,
                                    device=self.device)

    def load(self) -> Segmenter:
        """The segmenter with its presegmenter, both loaded here."""
        return self.load_with(self.presegmenter())

    def load_with(self, presegmenter) -> Segmenter:
        """The segmenter around a presegmenter loaded already (``None``: sampling from noise)."""
        return Segmenter.from_checkpoint(self.model, device=self.device, settings=self.settings, quiet=self.quiet,
                                         presegmenter=presegmenter)


@dataclass(frozen=True)
class ScanWork:
    """Where and how every scan of a run is segmented and written."""

    output: Path
    volume: bool
    output_format: str | None
    total: int
    keep_all_parts: bool = False
    slice_index: int | str | None = None
    labels: str = "spinesegdiff"
    series: str | None = None


ScanRunner = Callable[[list[tuple[int, PlannedScan]]], Iterator[ScanOutcome]]
"""Segments ``(index, planned scan)`` pairs and yields their outcomes in the same order."""


def _segment_in_process(load_segmenter: Callable[[], Segmenter], work: ScanWork,
                        todo: list[tuple[int, PlannedScan]]) -> Iterator[ScanOutcome]:
    """The scans one by one in this process: while one is segmented (:func:`segment_phase`), the next one is
    read and preprocessed in a background thread (:func:`~spinesegdiff.pipelines.read_ahead.read_ahead`, one
    scan ahead at most) and the previous one's level report, overlay and files are written in another
    (:func:`write_phase`, :class:`~spinesegdiff.pipelines.write_behind.WriteBehind`, one write at a time); the
    model is loaded after the first readable scan. Outcomes, errors included, come in ``todo``'s order, as
    :func:`segment_planned` gives them. An interruption rolls back the scan being segmented and finishes the
    write under way (that scan's outputs are complete; its outcome is not reported)."""
    segmenter: list[Segmenter] = []

    def get_segmenter() -> Segmenter:
        if not segmenter:  # a model that cannot be loaded raises: no scan could be segmented
            segmenter.append(load_segmenter())
        return segmenter[0]

    reads = read_ahead(todo, lambda item: read_planned(item[1], item[0], work))
    writes = WriteBehind(partial(write_phase, work=work))
    try:
        for (index, planned), read in zip(todo, reads, strict=True):
            segmented = segment_phase(read, planned, index, work, get_segmenter)
            yield from writes.done()
            if isinstance(segmented, ScanOutcome):
                yield segmented
            else:
                writes.submit(segmented)
        yield from writes.done()
    finally:
        reads.close()  # an interrupted or abandoned run leaves no read queued
        writes.close()  # and a write under way is finished: its scan's set is published whole


def _predict_each(plan: tuple[PlannedScan, ...], skipped: tuple[Skipped, ...], run_scans: ScanRunner, *,
                  progress: bool, skip_existing: bool = False, summary: Path | None = None,
                  summarise_left_out: bool = True) -> Iterator[ScanOutcome]:
    """The left-out inputs first (notes and errors), then each planned scan segmented (or skipped) and written.

    Which scans are complete already (``skip_existing``) is decided before the first is segmented. The summary
    (if any) is rewritten before each scan's outcome is handed on, so it holds every scan finished; a model that
    cannot be loaded leaves none. An input left out with an error (a listed scan that does not exist, a broken
    link) is a failed row of the summary when ``summarise_left_out`` (every run but shards 2..N, so that joined
    shard summaries name it once).
    """
    from tqdm.auto import tqdm

    total = len(skipped) + len(plan)
    rows: list[dict[str, Any]] = []  # the summary is first written after a scan: a model that fails to load
    for index, left_out in enumerate(skipped):
        text = str(left_out)
        if left_out.error and summarise_left_out:
            rows.append(summary_row(left_out.path, "failed", problem=text))
        yield ScanOutcome(left_out.path, index, total, error=text if left_out.error else None,
                          note=None if left_out.error else text)
    indexed = list(enumerate(plan, start=len(skipped)))
    complete = {index for index, planned in indexed if skip_existing and complete_outputs(planned)}
    computed = run_scans([(index, planned) for index, planned in indexed if index not in complete])
    for index, planned in tqdm(indexed, desc="predict", unit="scan", disable=not progress or len(plan) < 2):
        if index in complete:
            outcome = ScanOutcome(planned.scan, index, total, paths=dict(planned.outputs),
                                  note=f"{planned.scan}: skipped: its outputs are complete "
                                       f"({planned.outputs['report'].name} lists them)")
            status = "skipped"
        else:
            outcome = next(computed)
            status = "written" if outcome.ok else "failed"
        rows.append(summary_row(planned.scan, status, report=outcome.paths["report"] if outcome.paths else None,
                                seconds=outcome.seconds, problem=outcome.error))
        _write_summary(summary, rows)
        yield outcome
    if not plan:
        _write_summary(summary, rows)  # the header (and the inputs left out with an error): no scan to segment


def _write_summary(path: Path | None, rows: list[dict[str, Any]]) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_summary(path, rows)
    except OSError as err:
        raise InputError(path, f"cannot write the summary ({err.strerror or err})") from err


def segment_planned(planned: PlannedScan, index: int, work: ScanWork,
                    get_segmenter: Callable[[], Segmenter]) -> ScanOutcome:
    """Read, segment and write one planned scan: its outcome (with the one-line error if it failed)."""
    return segment_read(read_planned(planned, index, work), planned, index, work, get_segmenter)


def read_planned(planned: PlannedScan, index: int, work: ScanWork) -> LoadedScan | ScanOutcome:
    """Read and preprocess one planned scan (:func:`load_scan`): the loaded scan, or its outcome with the
    one-line error when it cannot be read or is refused. Touches no output and no model: safe in a thread."""
    try:
        return dataclasses.replace(load_scan(planned.scan, volume=work.volume, slice_index=work.slice_index,
                                             series=work.series), stem=planned.stem)
    except SpineSegDiffError as err:
        return ScanOutcome(planned.scan, index, work.total, error=str(err))


@dataclass(frozen=True)
class SegmentedScan:
    """A scan segmented and not yet written (:func:`segment_phase`), with its quality doubts."""

    result: ScanSegmentation
    planned: PlannedScan
    index: int
    doubts: tuple[str, ...] = ()


def segment_read(read: LoadedScan | ScanOutcome, planned: PlannedScan, index: int, work: ScanWork,
                 get_segmenter: Callable[[], Segmenter]) -> ScanOutcome:
    """Segment and write a scan :func:`read_planned` gave (an outcome, a failed read, is handed on as it is):
    its outcome, with the one-line error if it failed and the quality doubts as its warning."""
    segmented = segment_phase(read, planned, index, work, get_segmenter)
    return segmented if isinstance(segmented, ScanOutcome) else write_phase(segmented, work)


def segment_phase(read: LoadedScan | ScanOutcome, planned: PlannedScan, index: int, work: ScanWork,
                  get_segmenter: Callable[[], Segmenter]) -> SegmentedScan | ScanOutcome:
    """The first half of :func:`segment_read`: the scan segmented (with its quality doubts), or its outcome
    with the one-line error. Writes nothing."""
    if isinstance(read, ScanOutcome):
        return read
    segmenter = get_segmenter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", QualityWarning)
            result = segment_loaded(read, segmenter, keep_all_parts=work.keep_all_parts)
    except SpineSegDiffError as err:
        return ScanOutcome(planned.scan, index, work.total, error=str(err))
    for other in (w for w in caught if not issubclass(w.category, QualityWarning)):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    doubts = tuple(str(w.message) for w in caught if issubclass(w.category, QualityWarning))
    return SegmentedScan(result, planned, index, doubts)


def write_phase(segmented: SegmentedScan, work: ScanWork) -> ScanOutcome:
    """The second half of :func:`segment_read`: the level report, the overlay and the scan's files written
    together (:func:`write_outputs`); its outcome, with the one-line error if they could not be written.
    Touches no model and no signal handler: safe in a thread."""
    scan, index, result = segmented.planned.scan, segmented.index, segmented.result
    try:
        paths = write_outputs(result, work.output, output_format=work.output_format, labels=work.labels)
    except SpineSegDiffError as err:
        return ScanOutcome(scan, index, work.total, error=str(err))
    seconds = sum(v for k, v in result.timings.items() if k.endswith("_s"))
    return ScanOutcome(scan, index, work.total, paths=paths, seconds=seconds,
                       warning="; ".join(segmented.doubts) if segmented.doubts else None)


@dataclass(frozen=True)
class DemoRun:
    """What :func:`run_demo` did: the segmentation, its files, where it ran and how long it took."""

    result: ScanSegmentation
    paths: dict[str, Path]
    device: str
    seconds: float


def run_demo(output: str | Path, *, device: str = "auto", settings: SamplerSettings | None = None,
             preseg: str | None = None, preseg_model: str | Path | None = None) -> DemoRun:
    """Segment the shipped sample scan (SPIDER patient 107, T2 SPACE) with the shipped models; write the outputs.

    ``preseg`` and ``preseg_model`` as for :func:`segment` (default: the shipped U-Net and refiner).
    """
    from spinesegdiff.assets import sample_scan_path

    started = time.perf_counter()
    presegmenter = resolve_presegmenter(preseg, preseg_model, user_model=False,
                                        preseg_steps=settings.preseg_steps if settings else None, device=device)
    segmenter = Segmenter.from_checkpoint(None, device=device, settings=settings, quiet=True,
                                          presegmenter=presegmenter)
    result = segment(sample_scan_path(), segmenter=segmenter)
    paths = write_outputs(result, output)
    return DemoRun(result=result, paths=paths, device=str(segmenter.device), seconds=time.perf_counter() - started)


def output_suffix(source: Path | None, requested: str | None) -> str:
    """The label file's ending: the requested format's (``dicom-seg`` -> ``.dcm``), else the input's own, NIfTI
    for DICOM folders and arrays.

    Raises:
        InputError: a format not in :data:`OUTPUT_FORMATS`; ``dicom-seg`` for a ``source`` that is not a DICOM
            series folder (named; ``None``, not yet known, passes).
    """
    if requested:
        suffix = format_suffix(requested)
        if suffix is None:
            raise InputError(None, f"output format {requested!r} is not one of {', '.join(OUTPUT_FORMATS)}")
        if suffix == DICOM_SEG_SUFFIX and source is not None and not source.is_dir():
            raise InputError(source, f"is not a DICOM series folder: --format {requested} writes a DICOM "
                                     "Segmentation of a DICOM series (choose another --format for this input)")
        return suffix
    suffix = image_suffix(source) if source is not None else ""
    return {"": ".nii.gz", ".mhd": ".mha", ".nhdr": ".nrrd"}.get(suffix, suffix)


def check_label_convention(labels: str, suffix: str | None) -> None:
    """Refuse an unknown label convention, or SPIDER's instance codes in a format of three segments.

    Raises:
        SpineSegDiffError: naming ``--labels`` and the problem.
    """
    if labels not in LABEL_CONVENTIONS:
        raise SpineSegDiffError(f"--labels {labels!r}: choose one of {', '.join(LABEL_CONVENTIONS)}")
    if labels == "spider" and suffix in INSTANCE_FREE_FORMATS:
        raise SpineSegDiffError(f"--labels spider writes SPIDER's instance codes into a label map: {suffix} holds "
                                "one segment per structure; choose nii.gz, mha, nrrd or nii")


def _write_labels(path: Path, result: ScanSegmentation, suffix: str, codes: np.ndarray | None = None) -> None:
    """The label map in the format of ``suffix``: a DICOM Segmentation, a Slicer segmentation or an image
    (``codes``, when given, instead of the classes: SPIDER's instance codes)."""
    if suffix == DICOM_SEG_SUFFIX:
        if result.source is None:
            raise InputError(None, "--format dicom-seg needs a DICOM series folder as input: an array has no "
                                   "DICOM instances for the Segmentation to reference")
        algorithm = {key: str(result.settings[key]) for key in ("model", "mode") if key in result.settings}
        write_dicom_segmentation(path, result.labels, result.source, parameters=algorithm,
                                 wanted_series=(result.settings.get("series") or {}).get("uid") or None)
    elif suffix == SEGMENTATION_SUFFIX:
        write_slicer_segmentation(path, result.labels, result.geometry)
    else:
        write_image(path, result.labels if codes is None else codes, result.geometry)


def write_outputs(result: ScanSegmentation, out_dir: str | Path, *, output_format: str | None = None,
                  labels: str = "spinesegdiff") -> dict[str, Path]:
    """Write ``<stem>_seg``, ``<stem>_uncertainty``, ``<stem>_overlay.png`` and ``<stem>.json``, all or none.

    The four files are written into a hidden staging folder inside ``out_dir`` and then renamed into place
    together, the JSON last (see :func:`~spinesegdiff.pipelines.publish.staged_outputs`): a failure, a full
    disk or a signal leaves none of them, and a set without its JSON is one a killed process did not finish.
    The JSON is strict: an undefined number (no pixels, non-finite uncertainty) is ``null``. With
    ``output_format="dicom-seg"`` the labels are a DICOM Segmentation of the source series (``<stem>_seg.dcm``,
    :mod:`spinesegdiff.data.dicom_seg`) and the uncertainty a NIfTI ``<stem>_uncertainty.nii.gz``. With
    ``labels="spider"`` the label map holds SPIDER's instance codes
    (:mod:`~spinesegdiff.pipelines.label_convention`) and the report names them (``label_values``).

    Raises:
        InputError: the output folder or a file cannot be written (the message names it); ``dicom-seg`` for an
            input that is not a DICOM series folder, or a series that changed since it was read.
    """
    out_dir = Path(out_dir)
    suffix = output_suffix(result.source, output_format)
    check_label_convention(labels, suffix)
    codes = None if labels == "spinesegdiff" else spider_label_map(result.labels, result.prepared.grid,
                                                                     result.prepared.indices)
    paths = {
        "segmentation": out_dir / f"{result.stem}_seg{suffix}",
        "uncertainty": out_dir / f"{result.stem}_uncertainty{uncertainty_suffix(suffix)}",
        "overlay": out_dir / f"{result.stem}_overlay.png",
        "report": out_dir / f"{result.stem}.json",
    }
    if result.levels is None:  # the levels named and measured on the mid-sagittal slice
        result.levels = scan_levels(result.labels, result.prepared.grid, result.prepared.indices,
                                    image_zyx=result.image, uncertainty_zyx=result.uncertainty)
    with staged_outputs(out_dir) as outputs:
        mark = time.perf_counter()
        outputs.write(paths["segmentation"], lambda p: _write_labels(p, result, suffix, codes))
        outputs.write(paths["uncertainty"], lambda p: write_image(p, result.uncertainty, result.geometry))
        outputs.write(paths["overlay"], lambda p: render_overlay(result, p))
        result.timings["write_s"] = time.perf_counter() - mark
        report = {
            "input": None if result.source is None else str(result.source),
            "outputs": {k: v.name for k, v in paths.items()},
            **result.settings,
            "sagittal_slices": result.prepared.indices,
            "acquisition_plane": result.prepared.grid.plane,
            "structures": result.statistics(),
            "quality": result.quality,
            "label_convention": labels,
            "label_values": (dict(zip(map(str, range(1, 4)), STRUCTURE_NAMES, strict=True)) if codes is None
                             else spider_value_names(codes)),
            **result.levels.to_dict(),
            "timings_s": {k: round(v, 3) if isinstance(v, float) else v for k, v in result.timings.items()},
            "citation": "SPIDER: van der Graaf et al., Scientific Data 11:264 (2024), CC BY 4.0",
        }
        outputs.write_text(paths["report"], strict_json(report))
    return paths
