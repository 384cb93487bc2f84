"""The systems an evaluation compares, and their predictions on one set of held-out slices.

A system is named on the command line as ``NAME=SPEC``:

* ``NAME=RUN``: a spinesegdiff run folder; a diffusion variant is sampled (from noise S = 15, K = Ts = 10 by default), a
  ``unet`` run is argmaxed;
* ``NAME=RUN,preseg=unet:UNET_RUN,t_pre=30``: a diffusion run refining a presegmenter's mask from ``T_pre``
  (S = 4 and one DDIM step per 30 noise steps by default)
  (``preseg=nnunet:FOLDER`` for an nnU-Net presegmenter);
* ``NAME=nnunet:FOLDER``: an nnU-Net v2 model folder (its ``fold_<k>`` of the evaluated fold); a ``2d`` folder
  segments the held-out slices, a ``3d_fullres`` one each held-out scan's sagittal slab (scored on its central
  slice);
* a run of the ``diffunet3d`` variant (Diff-UNet 3D) samples each held-out scan's slab from pure noise and is
  scored on the central slice. The slabs come from ``evaluate --slab-cache`` or else from the 3D run's own
  training cache (:mod:`spinesegdiff.data.slabs`); a slab is 9 slices around the midline, not the whole volume
  of the paper's 3D rows;
* ``fusion=exp|uncertainty`` overrides a diffusion run's fusion of the last steps (``uncertainty`` is Diff-UNet
  2D's, which shares SpineSegDiff's network and training).

For a cross-validated evaluation (``--folds``) a path may hold ``{fold}``, replaced by each fold's number
(``U-Net=runs/unet-fold{fold}``); an nnU-Net folder already holds every fold as ``fold_<k>``.

:func:`predict_system` returns a :class:`PredictionSet`: per slice the label map, the class probabilities and
the uncertainty map (entropy for single-pass systems), saved as ``<name>.npz`` so a report can be rebuilt
without sampling again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from spinesegdiff.data.slabs import Slabs
from spinesegdiff.errors import SpineSegDiffError
from spinesegdiff.evaluation.held_out import segment_timed
from spinesegdiff.evaluation.recording import recorded_path
from spinesegdiff.files import atomic_write, atomic_write_text
from spinesegdiff.pipelines.sampling import class_probabilities, normalised_entropy
from spinesegdiff.pipelines.segmenter import SamplerSettings, Segmenter


@dataclass(frozen=True)
class SystemSpec:
    """A parsed ``NAME=SPEC``."""

    name: str
    kind: str  # "run" or "nnunet"
    path: Path
    preseg: str | None = None  # "unet" or "nnunet"
    preseg_path: Path | None = None
    t_pre: int | None = None
    fusion: str | None = None

    @classmethod
    def parse(cls, text: str) -> SystemSpec:
        name, sep, spec = text.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise SpineSegDiffError(f"system {text!r}: expected NAME=RUN, NAME=RUN,preseg=KIND:PATH,t_pre=N or "
                                    "NAME=nnunet:FOLDER")
        if any(character in name for character in "/\\"):
            raise SpineSegDiffError(f"system {name!r}: a name cannot hold / or \\ (it names the prediction files)")
        head, *options = [part.strip() for part in spec.split(",")]
        values = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in ("preseg", "t_pre", "fusion"):
                raise SpineSegDiffError(f"system {name}: unknown option {option!r} (preseg=KIND:PATH, t_pre=N, "
                                        "fusion=exp|uncertainty)")
            values[key] = value
        if head.startswith("nnunet:"):
            if values:
                raise SpineSegDiffError(f"system {name}: an nnU-Net system takes no options")
            return cls(name.strip(), "nnunet", Path(head.removeprefix("nnunet:")))
        preseg = preseg_path = t_pre = None
        if "preseg" in values:
            preseg, sep, location = values["preseg"].partition(":")
            if preseg not in ("unet", "nnunet") or not sep:
                raise SpineSegDiffError(f"system {name}: preseg must read unet:PATH or nnunet:PATH")
            preseg_path = Path(location)
            t_pre = int(values.get("t_pre", 30))
        elif "t_pre" in values:
            raise SpineSegDiffError(f"system {name}: t_pre needs preseg=KIND:PATH")
        fusion = values.get("fusion")
        if fusion not in (None, "exp", "uncertainty"):
            raise SpineSegDiffError(f"system {name}: fusion must be exp or uncertainty, got {fusion!r}")
        return cls(name.strip(), "run", Path(head), preseg, preseg_path, t_pre, fusion)

    def for_fold(self, fold: int) -> SystemSpec:
        """This system with ``{fold}`` in its paths replaced by ``fold``."""

        def fill(path: Path | None) -> Path | None:
            return None if path is None else Path(str(path).replace("{fold}", str(fold)))

        return replace(self, path=fill(self.path), preseg_path=fill(self.preseg_path))


@dataclass
class PredictionSet:
    """One system's predictions on ``N`` slices of the 320 x 320 model grid.

    Attributes:
        name: the system's name in tables.
        cases: ``N`` case names.
        labels: ``(N, 320, 320)`` uint8 classes 0-3.
        class_probabilities: ``(N, 4, 320, 320)`` float16, summing to 1 (diffusion systems: the fused structure
            probabilities normalised over the classes).
        uncertainty: ``(N, 320, 320)`` float16 in [0, 1].
        seconds_per_slice: prediction time.
        description: what ran (model, sampler settings).
    """

    name: str
    cases: list[str]
    labels: np.ndarray
    class_probabilities: np.ndarray
    uncertainty: np.ndarray
    seconds_per_slice: float
    description: dict = field(default_factory=dict)

    def save(self, folder: Path) -> Path:
        """Write ``<name>.npz`` (the arrays) and ``<name>.json`` (the rest) into ``folder``; returns the first."""
        folder.mkdir(parents=True, exist_ok=True)

        def write_arrays(temporary: Path) -> None:
            with temporary.open("wb") as handle:
                np.savez_compressed(handle, labels=self.labels, class_probabilities=self.class_probabilities,
                                    uncertainty=self.uncertainty)

        path = atomic_write(folder / f"{self.name}.npz", write_arrays)
        atomic_write_text(folder / f"{self.name}.json", json.dumps(
            {"name": self.name, "cases": self.cases, "seconds_per_slice": self.seconds_per_slice,
             "description": self.description}, indent=2, default=str))
        return path

    @classmethod
    def concatenate(cls, parts: Sequence[PredictionSet]) -> PredictionSet:
        """One system's predictions on several folds as one set (cases in the order of ``parts``)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        counts = [len(part.cases) for part in parts]
        return cls(parts[0].name, [case for part in parts for case in part.cases],
                   np.concatenate([part.labels for part in parts]),
                   np.concatenate([part.class_probabilities for part in parts]),
                   np.concatenate([part.uncertainty for part in parts]),
                   float(np.average([part.seconds_per_slice for part in parts], weights=counts)),
                   {**parts[0].description, "parts": [part.description for part in parts]} if len(parts) > 1
                   else parts[0].description)

    @classmethod
    def load(cls, folder: Path, name: str) -> PredictionSet:
        meta = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        arrays = np.load(folder / f"{name}.npz")
        return cls(meta["name"], meta["cases"], arrays["labels"], arrays["class_probabilities"],
                   arrays["uncertainty"], meta["seconds_per_slice"], meta.get("description", {}))


def _single_pass_uncertainty(class_probabilities: np.ndarray) -> np.ndarray:
    """A single-pass system's uncertainty: the normalised class entropy (the sampler's own measure)."""
    return normalised_entropy(torch.from_numpy(np.asarray(class_probabilities, dtype=np.float32))).numpy()


def _diffusion_system(spec: SystemSpec, images: np.ndarray, *, target: str, device: str,
                      settings: SamplerSettings | None, quiet: bool):
    """``(class probabilities, uncertainty, seconds, description)`` of a diffusion run, warmed up untimed."""
    from spinesegdiff.pipelines.presegmenters import load_presegmenter

    presegmenter = None
    if spec.preseg is not None:
        presegmenter = load_presegmenter(spec.preseg, spec.preseg_path, device=target)
    base = settings or SamplerSettings()
    segmenter = Segmenter.from_checkpoint(
        spec.path, device=device, quiet=quiet, presegmenter=presegmenter,
        settings=replace(base, preseg_steps=spec.t_pre, fusion=spec.fusion or base.fusion))
    timed = segment_timed(segmenter.segment, images, per_slice=False, warm_up=True)
    result = timed.outputs[0]
    # calibration is judged on the fused structure probabilities normalised to classes: the paper's
    # softmax over scores in [0, 1] is never sharper than e : 1 : 1 : 1 and reads as miscalibrated by
    # construction; the argmax is the same either way
    probs = class_probabilities(torch.from_numpy(result.probabilities), "normalise").numpy()
    description = {"system": f"diffusion ({segmenter.model_config.variant})", "run": recorded_path(spec.path),
                   "sampler": segmenter.describe()}
    return probs, result.uncertainty, timed.seconds, description


SLAB_VARIANTS: tuple[str, ...] = ("diffunet3d",)
"""Run variants that segment sagittal slabs rather than slices."""


def _run_variant(run: Path) -> str:
    from spinesegdiff.models.checkpoint import load_checkpoint, resolve_model_file

    return str(load_checkpoint(resolve_model_file(run), map_location="cpu")["model_config"]["variant"])


def needs_slabs(spec: SystemSpec) -> bool:
    """Whether the system segments each scan's sagittal slab (nnU-Net 3d, Diff-UNet 3D) instead of its slice."""
    if spec.kind == "nnunet":
        from spinesegdiff.pipelines.nnunet import folder_configuration

        configuration = folder_configuration(spec.path)
        return configuration is not None and configuration.startswith("3d")
    return spec.preseg is None and _run_variant(spec.path) in SLAB_VARIANTS


def _slab_system(spec: SystemSpec, slabs: Slabs, *, fold: int, target: str, settings: SamplerSettings | None):
    """``(class probabilities, uncertainty, seconds, description)`` of a 3D system on each slab's central slice
    (``(N, 4, H, W)`` summing to 1, ``(N, H, W)`` in ``[0, 1]``); a diffusion run is warmed up untimed."""
    if spec.kind == "nnunet":
        from spinesegdiff.pipelines.nnunet import NnUNetSlabSegmenter

        segmenter = NnUNetSlabSegmenter(spec.path, fold=fold, device=target)
        timed = segment_timed(lambda _: segmenter(slabs.images, slabs.central), slabs.images, per_slice=False)
        probs = np.asarray(timed.outputs[0], dtype=np.float32)
        description = {"system": f"nnU-Net v2 3d_fullres on {slabs.depth}-slice sagittal slabs",
                       "folder": recorded_path(spec.path), "fold": fold}
        return probs, _single_pass_uncertainty(probs), timed.seconds, description
    from spinesegdiff.pipelines.slab_sampling import segment_slabs

    resolved = (settings or SamplerSettings()).resolved(refining=False)
    options = {"num_samples": resolved.num_samples, "num_steps": resolved.num_steps,
               "fuse_steps": resolved.fuse_steps, "seed": resolved.seed, "device": target}
    timed = segment_timed(lambda _: segment_slabs(spec.path, slabs.images, slabs.central, **options),
                          slabs.images, per_slice=False, warm_up=True)
    structure_probs, uncertainty = timed.outputs[0]
    probs = class_probabilities(torch.from_numpy(np.asarray(structure_probs, dtype=np.float32)),
                                "normalise").numpy()
    description = {"system": f"diffusion (diffunet3d) on {slabs.depth}-slice sagittal slabs",
                   "run": recorded_path(spec.path),
                   "sampler": {key: value for key, value in options.items() if key != "device"}}
    return probs, uncertainty, timed.seconds, description


def predict_system(spec: SystemSpec, images: np.ndarray, cases: list[str], *, fold: int, device: str = "auto",
                   settings: SamplerSettings | None = None, quiet: bool = True,
                   slabs: Slabs | None = None) -> PredictionSet:
    """Run one system on ``(N, 320, 320)`` uint8 slices of the evaluated fold, all slices in one timed call.

    A 3D system (:func:`needs_slabs`) segments ``slabs`` instead, the held-out scans' slabs in the order of
    ``cases``, whose central slices are ``images``.
    """
    from spinesegdiff.devices import resolve_device

    target = str(resolve_device(device, quiet=True))
    if needs_slabs(spec):
        if slabs is None or slabs.cases != list(cases):
            raise SpineSegDiffError(f"system {spec.name}: segments sagittal slabs; give evaluate a cache of all "
                                    "slices (--slab-cache, built by spinesegdiff preprocess --all-slices)")
        probs, uncertainty, seconds, description = _slab_system(spec, slabs, fold=fold, target=target,
                                                                settings=settings)
    else:
        probs, uncertainty, seconds, description = _slice_system(spec, images, fold=fold, target=target,
                                                                 device=device, settings=settings, quiet=quiet)
    return PredictionSet(spec.name, list(cases), np.asarray(probs).argmax(axis=1).astype(np.uint8),
                         np.asarray(probs, dtype=np.float16), np.asarray(uncertainty, dtype=np.float16),
                         seconds / max(1, len(images)), description)


def _slice_system(spec: SystemSpec, images: np.ndarray, *, fold: int, target: str, device: str,
                  settings: SamplerSettings | None, quiet: bool):
    """``(class probabilities, uncertainty, seconds, description)`` of a 2D system on ``(N, 320, 320)`` slices."""
    from spinesegdiff.models.checkpoint import load_model, resolve_model_file
    from spinesegdiff.pipelines.presegmenters import UNetPresegmenter

    single_pass = None
    if spec.kind == "nnunet":
        from spinesegdiff.pipelines.nnunet import NnUNetPresegmenter

        single_pass = NnUNetPresegmenter(spec.path, fold=fold, device=target)
        description = {"system": "nnU-Net v2 2d", "folder": recorded_path(spec.path), "fold": fold}
    else:
        net, config, _ = load_model(resolve_model_file(spec.path), map_location="cpu")
        if config.variant == "unet":
            single_pass = UNetPresegmenter(net, device=target)
            description = {"system": "built-in U-Net", "run": recorded_path(spec.path)}
    if single_pass is None:
        return _diffusion_system(spec, images, target=target, device=device, settings=settings, quiet=quiet)
    timed = segment_timed(single_pass, images, per_slice=False)
    probs = timed.outputs[0]
    return probs, _single_pass_uncertainty(probs), timed.seconds, description
