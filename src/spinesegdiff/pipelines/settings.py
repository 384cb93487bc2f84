"""The registries and settings of inference, without torch: allowed values live here once.

The command line builds its choices from these tuples (so ``--help``, validation and docs cannot drift) and must
not import torch to do so; this module imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
Backend = Literal["auto", "torch", "openvino"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino")
PRESEGMENTERS: tuple[str, ...] = ("none", "unet", "nnunet")
"""Presegmenter kinds: none (sample from noise), the built-in U-Net, an nnU-Net v2 2d model."""
OUTPUT_FORMATS: tuple[str, ...] = (".nii.gz", ".mha", ".nrrd", ".nii", ".seg.nrrd", "dicom-seg")
"""File formats ``predict`` writes its label and uncertainty images in (``--format`` takes them without the dot).
Most are the label file's ending; ``.seg.nrrd`` is a 3D Slicer segmentation (one named, coloured segment per
structure), and ``dicom-seg`` (named by what it holds: ``.dcm`` alone would not say) a DICOM Segmentation object
``<stem>_seg.dcm`` of a DICOM series input. Beside a segmentation the uncertainty map is a scalar image
(:func:`uncertainty_suffix`). docs/FORMATS.md says what each holds and which tool opens it."""
NAMED_FORMATS: dict[str, str] = {"dicom-seg": ".dcm"}
"""The formats of :data:`OUTPUT_FORMATS` named by what they hold, and the ending of their label file."""
_SCALAR_SUFFIXES = {".seg.nrrd": ".nrrd", ".dcm": ".nii.gz"}


def format_suffix(output_format: str) -> str | None:
    """The ending of the label file of ``output_format``: ``nii.gz`` or ``.nii.gz`` -> ``.nii.gz``, ``dicom-seg``
    -> ``.dcm``; ``None`` for a format not in :data:`OUTPUT_FORMATS`."""
    if output_format in NAMED_FORMATS:
        return NAMED_FORMATS[output_format]
    suffix = output_format if output_format.startswith(".") else f".{output_format}"
    return suffix if suffix in OUTPUT_FORMATS else None


def uncertainty_suffix(suffix: str) -> str:
    """The ending of the uncertainty map written beside a label map ending in ``suffix`` (an output format).

    A segmentation format holds labels only: the uncertainty beside a ``.seg.nrrd`` is a scalar ``.nrrd``, the
    one beside a DICOM Segmentation (``.dcm``) a NIfTI ``.nii.gz``.
    """
    return _SCALAR_SUFFIXES.get(suffix, suffix)


LABEL_CONVENTIONS: tuple[str, ...] = ("spinesegdiff", "spider")
"""Label values ``predict`` writes: ours (0 background, 1 canal, 2 vertebra, 3 disc) or SPIDER's instance codes
(:mod:`spinesegdiff.pipelines.label_convention`; label-map image formats only)."""
INSTANCE_FREE_FORMATS: tuple[str, ...] = (".seg.nrrd", ".dcm")
"""Formats whose segments are the three structures: they hold our labels only."""

DEFAULT_PRESEG_STEPS = 30
"""``T_pre``, the noise step a presegmentation is refined from when none is asked for."""
SAMPLES_FROM_NOISE = 15
"""``S`` when sampling from pure noise (the paper's)."""
STEPS_FROM_NOISE = 10
"""``K``, the DDIM steps from pure noise (the paper's), and the most a refinement takes by default."""
FUSED_STEPS = 10
"""``Ts``, the last steps fused, by default (every step when fewer are run)."""
REFINE_SAMPLES = 4
"""``S`` when refining a presegmentation. From ``T_pre = 30`` the samples hardly differ: on the 7 held-out
patients of fold 0, S = 1, 2, 4, 8 and 15 gave the same Dice, heatmap AUROC and ECE to the third decimal
(docs/PERFORMANCE.md); 4 keeps a margin at a quarter of the former 15's cost."""
REFINE_STRIDE = 30
"""Noise steps per DDIM step of a refinement when no step count is asked for: ``T_pre = 30`` -> one network call
per sample (measured as accurate as 2 and 10 steps there)."""
FUSIONS: tuple[str, ...] = ("exp", "uncertainty")
MAX_SAMPLES = 64
"""The most samples ``S`` (and images per batch): the network runs on ``S`` 320 x 320 images at once, so memory
grows with ``S`` (``--samples 100000`` asked for a 122 GB allocation); 64 is four times the paper's 15."""
MAX_STEPS = 1000
"""The most DDIM steps ``K`` (and the bound on ``T_pre``): the noise steps ``T`` of the shipped models'
schedules. A model with a shorter schedule is checked against its own ``T`` when it is loaded
(:meth:`SamplerSettings.check_schedule`)."""
MAX_SEED = 2**63 - 1
"""The largest seed: ``torch.Generator.manual_seed`` takes a 64-bit integer."""


class InvalidSetting(ValueError):
    """A sampler setting out of range; ``field`` names it (the command line names its option instead).

    ``str(error)`` reads ``"num_samples must lie in 1..64 ..., got 100000"``.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}")


_DEFAULTED = ("num_samples", "num_steps", "fuse_steps", "preseg_steps")
"""The fields whose ``None`` means the pipeline's default (:meth:`SamplerSettings.resolved`)."""


def _check_range(field: str, value: int, low: int, high: int, why: str) -> None:
    if not low <= value <= high:
        reason = f" ({why})" if why else ""
        raise InvalidSetting(field, f"must lie in {low}..{high}{reason}, got {value}")


@dataclass(frozen=True, kw_only=True)
class SamplerSettings:
    """How to sample: ``S`` samples, ``K`` DDIM steps, the last ``Ts`` fused.

    ``None`` (the default) for ``num_samples``, ``num_steps`` or ``fuse_steps`` means the pipeline's default,
    filled in by :meth:`resolved`: from noise S = 15, K = 10, Ts = 10 (the paper's); refining a presegmentation
    S = 4 and one DDIM step per 30 noise steps of ``T_pre`` (1 at ``T_pre = 30``, at most 10). A ``num_steps``
    that is given is the number of DDIM steps either way (at most ``T_pre`` when refining).

    ``fusion`` ``None`` picks the variant's own (Diff-UNet 2D: uncertainty-weighted; others: exponential).
    ``precision`` is the network's arithmetic: ``auto`` takes bfloat16 where the hardware runs it fast (CPUs
    with AVX512-BF16 or AMX, CUDA GPUs with bf16) and float32 elsewhere; the sampler's own arithmetic (DDIM
    updates, fusion, entropy) stays float32 either way. ``backend`` runs the denoiser in PyTorch or OpenVINO;
    ``auto`` takes OpenVINO on a CPU where it is installed (about 1.8x faster per pass there), else PyTorch.

    ``preseg_steps`` (``T_pre``, with a presegmenter): the presegmentation is noised to ``T_pre`` and refined
    from there in :meth:`refine_steps` DDIM steps; ``T_pre = 0`` returns the presegmenter's own mask.
    """

    num_samples: int | None = None
    num_steps: int | None = None
    fuse_steps: int | None = None
    eta: float = 0.0
    fusion: Literal["exp", "uncertainty"] | None = None
    seed: int = 0
    images_per_batch: int = 1
    precision: Precision = "auto"
    backend: Backend = "auto"
    preseg_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_samples", "num_steps", "fuse_steps", "seed", "images_per_batch", "preseg_steps"):
            value = getattr(self, name)
            if value is None and name in _DEFAULTED:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidSetting(name, f"must be an integer, got {value!r}")
        for name in ("num_samples", "num_steps", "fuse_steps", "images_per_batch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InvalidSetting(name, f"must be positive, got {getattr(self, name)}")
        if self.num_samples is not None:
            _check_range("num_samples", self.num_samples, 1, MAX_SAMPLES,
                         "each sample is a 320 x 320 chain held in memory and run through the network at once")
        _check_range("images_per_batch", self.images_per_batch, 1, MAX_SAMPLES, "")
        if self.num_steps is not None:
            _check_range("num_steps", self.num_steps, 1, MAX_STEPS, "a DDIM step per noise step at most")
        if None not in (self.fuse_steps, self.num_steps) and self.fuse_steps > self.num_steps:
            raise InvalidSetting("fuse_steps", f"must lie in 1..num_steps ({self.num_steps}), got {self.fuse_steps}")
        if not 0 <= self.seed <= MAX_SEED:
            raise InvalidSetting("seed", f"must lie in 0..2**63 - 1, got {self.seed}")
        if self.preseg_steps is not None and not 0 <= self.preseg_steps < MAX_STEPS:
            raise InvalidSetting("preseg_steps", f"(T_pre) must lie in 0..{MAX_STEPS - 1}, got {self.preseg_steps}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, int | float) or not 0.0 <= self.eta <= 1.0:
            raise InvalidSetting("eta", f"must lie in [0, 1], got {self.eta!r}")
        if self.fusion not in (None, *FUSIONS):
            raise InvalidSetting("fusion", f"must be one of {FUSIONS} or None, got {self.fusion!r}")
        if self.precision not in PRECISIONS:
            raise InvalidSetting("precision", f"must be one of {PRECISIONS}, got {self.precision!r}")
        if self.backend not in BACKENDS:
            raise InvalidSetting("backend", f"must be one of {BACKENDS}, got {self.backend!r}")

    def check_schedule(self, num_train_timesteps: int) -> None:
        """Refuse steps the model's noise schedule (``T = num_train_timesteps``) does not have.

        Raises:
            InvalidSetting: ``num_steps > T`` or ``preseg_steps >= T``.
        """
        if self.num_steps is not None and self.num_steps > num_train_timesteps:
            raise InvalidSetting("num_steps", f"must be at most the model's {num_train_timesteps} noise steps, "
                                              f"got {self.num_steps}")
        if self.preseg_steps is not None and self.preseg_steps >= num_train_timesteps:
            raise InvalidSetting("preseg_steps", f"(T_pre) must be below the model's {num_train_timesteps} noise "
                                                 f"steps, got {self.preseg_steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def refine_steps(self) -> int:
        """DDIM steps of a refinement from ``T_pre``: ``num_steps`` where given, else ``ceil(T_pre / 30)`` (at
        most 10); never more than ``T_pre``; 0 at ``T_pre = 0`` (the presegmenter's own mask)."""
        if not self.preseg_steps:
            return 0
        steps = self.num_steps or min(STEPS_FROM_NOISE, -(-self.preseg_steps // REFINE_STRIDE))
        return max(1, min(steps, self.preseg_steps))

    def resolved(self, *, refining: bool) -> SamplerSettings:
        """These settings with the pipeline's defaults filled in (class docstring); ``refining``: a presegmentation
        is refined from ``preseg_steps`` (set), else the sampler starts from pure noise."""
        if refining:
            steps = max(1, self.refine_steps())
            samples = REFINE_SAMPLES
        else:
            steps = self.num_steps or STEPS_FROM_NOISE
            samples = SAMPLES_FROM_NOISE
        fuse_steps = min(self.fuse_steps or FUSED_STEPS, steps)
        return dataclasses.replace(self, num_samples=self.num_samples or samples, num_steps=steps,
                                   fuse_steps=fuse_steps)
