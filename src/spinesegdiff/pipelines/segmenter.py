"""Segment model-grid slices with a trained network: the multi-sample DDIM sampler behind one object.

:class:`Segmenter` holds a network, its noise schedule and the sampling settings; :meth:`Segmenter.segment`
takes ``uint8`` 320 x 320 slices (as :func:`spinesegdiff.data.preprocess.prepare_scan` makes them) and returns the
fused probabilities, label maps and uncertainty maps as NumPy arrays: a
:class:`~spinesegdiff.pipelines.results.SliceSegmentation` (importable from here too), the one result type of
every sampler.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spinesegdiff.data.preprocess import to_network_range
from spinesegdiff.devices import resolve_device
from spinesegdiff.diffusion.config import SchedulerConfig
from spinesegdiff.errors import InputError, SpineSegDiffError
from spinesegdiff.models.checkpoint import checkpoint_scheduler, load_model, resolve_model_file
from spinesegdiff.models.config import SLAB_VARIANTS, ModelConfig
from spinesegdiff.pipelines.presegmenters import Presegmenter
from spinesegdiff.pipelines.results import SliceSegmentation
from spinesegdiff.pipelines.settings import (  # noqa: F401 (re-exported: the settings' former home)
    BACKENDS,
    DEFAULT_PRESEG_STEPS,
    PRECISIONS,
    REFINE_STRIDE,
    Backend,
    Precision,
    SamplerSettings,
)

if TYPE_CHECKING:  # PyTorch is imported where it is used: the compiled CPU path runs without it
    import torch


def fast_bfloat16_available(device: torch.device) -> bool:
    """Whether bfloat16 convolutions run natively here (not emulated, which is slower than float32)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(choice: str, device: torch.device) -> torch.dtype:
    """``fp32`` / ``bf16`` as asked; ``auto`` -> bfloat16 where :func:`fast_bfloat16_available`, else float32."""
    import torch

    if choice == "auto":
        return torch.bfloat16 if fast_bfloat16_available(device) else torch.float32
    return torch.bfloat16 if choice == "bf16" else torch.float32


def resolve_backend(choice: str, device: torch.device) -> str:
    """``torch`` / ``openvino`` as asked; ``auto`` -> OpenVINO on a CPU where it is installed, else PyTorch."""
    from spinesegdiff.pipelines.backends.openvino import openvino_available

    if choice == "auto":
        return "openvino" if device.type == "cpu" and openvino_available() else "torch"
    if choice == "openvino":
        if device.type != "cpu":
            raise SpineSegDiffError(f"the OpenVINO backend runs on the CPU only, not on {device.type}")
        if not openvino_available():
            raise SpineSegDiffError("the OpenVINO backend is not installed here: pip install openvino")
    return choice


class ReducedPrecisionNetwork:
    """Runs a copy of a network in ``dtype`` behind the float32 interface the sampler uses."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype) -> None:
        self.net = copy.deepcopy(net).to(dtype).eval()
        self.dtype = dtype
        self.has_image_encoder = bool(getattr(net, "has_image_encoder", False))

    def encode_image(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.net.encode_image(image.to(self.dtype))

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, *, image: torch.Tensor,
                 image_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.net(x_t.to(self.dtype), t, image=image.to(self.dtype), image_features=image_features).float()


def checked_settings(settings: SamplerSettings | None, presegmenter: Presegmenter | None,
                     num_train_timesteps: int, model_name: str) -> SamplerSettings:
    """The sampler settings of a segmenter, defaults filled in (:meth:`SamplerSettings.resolved`; ``T_pre = 30``
    by default with a presegmenter), and refused (with :class:`SpineSegDiffError`) when they ask for ``T_pre``
    without a presegmenter or for steps the model's ``T``-step schedule does not have."""
    settings = settings or SamplerSettings()
    if presegmenter is not None and settings.preseg_steps is None:
        settings = dataclasses.replace(settings, preseg_steps=DEFAULT_PRESEG_STEPS)
    if presegmenter is None and settings.preseg_steps is not None:
        raise SpineSegDiffError("preseg_steps needs a presegmenter (--preseg unet or nnunet)")
    try:  # steps the model's own schedule does not have: refused before any sampling
        settings.check_schedule(num_train_timesteps)
    except ValueError as err:
        raise SpineSegDiffError(f"{model_name or 'model'}: sampler settings do not fit the model: {err}") from err
    return settings.resolved(refining=presegmenter is not None)


class Segmenter:
    """A trained network plus its scheduler and sampling settings.

    Args:
        model: the network (eval mode), on any device.
        model_config: its configuration.
        train_config: the training settings (for the noise schedule), as saved in the checkpoint.
        device: where to run.
        settings: sampling settings.
        model_name: how reports name the model (the checkpoint path by default).
        presegmenter: a :class:`~spinesegdiff.pipelines.presegmenters.Presegmenter` whose mask is refined from
            ``settings.preseg_steps`` (default 30 when a presegmenter is given).

    ``quiet`` (set by :meth:`from_checkpoint`): no progress bar per slice for a volume.
    """

    quiet = True

    def __init__(self, model: torch.nn.Module, model_config: ModelConfig, train_config: dict[str, Any] | None, *,
                 device: torch.device, settings: SamplerSettings | None = None, model_name: str = "",
                 presegmenter: Presegmenter | None = None, scheduler_config: SchedulerConfig | None = None) -> None:
        import torch

        from spinesegdiff.diffusion import DDIMScheduler
        from spinesegdiff.models import model_prediction_type

        # the checkpoint's scheduler configuration; else the one in the training settings (linear, T = 1000
        # for a network built in code, without settings)
        self.scheduler_config = scheduler_config or SchedulerConfig.from_train_settings(train_config)
        self.settings = checked_settings(settings, presegmenter, self.scheduler_config.num_train_timesteps,
                                         model_name)
        self.presegmenter = presegmenter
        self.model_name = model_name
        self.model_config = model_config
        self.train_config = train_config or {}
        self.device = device
        self.dtype = torch.float32
        self.backend = "external"  # a ready denoiser object (ONNX Runtime, a test double) runs as given
        if isinstance(model, torch.nn.Module):
            model = model.to(device).eval()
            self.dtype = resolve_precision(self.settings.precision, device)
            self.backend = resolve_backend(self.settings.backend, device)
            if self.backend == "openvino":
                from spinesegdiff.pipelines.backends.openvino import OpenVinoDenoiser

                model = OpenVinoDenoiser(model, dtype=self.dtype, threads=torch.get_num_threads())
            elif self.dtype != torch.float32:
                model = ReducedPrecisionNetwork(model, self.dtype)
        self.model = model
        self.prediction_type = model_prediction_type(model_config)
        self.scheduler = DDIMScheduler(self.scheduler_config.noise_schedule(), prediction_type=self.prediction_type,
                                       eta=self.settings.eta)

    @classmethod
    def from_checkpoint(cls, model: str | Path | None = None, *, device: str = "auto",
                        settings: SamplerSettings | None = None, quiet: bool = False,
                        presegmenter: Presegmenter | None = None) -> Segmenter:
        """Load a checkpoint file or run folder; ``None`` loads the model shipped with the package (the shipped
        refiner when a presegmenter is given).

        On a CPU with OpenVINO (``backend`` ``auto`` or ``openvino``, ``eta = 0``) the result is a
        :class:`~spinesegdiff.pipelines.backends.compiled_segmenter.CompiledSegmenter` with the same interface
        and the same labels, which needs PyTorch only the first time a model file is used
        (:mod:`~spinesegdiff.pipelines.backends.compiled`); with ``backend="torch"`` a compiled presegmenter is
        swapped for its PyTorch twin.
        """
        if model is None:  # the shipped model; with a presegmenter, the shipped refiner
            from spinesegdiff.assets import default_model_path, default_refiner_path

            path = default_refiner_path() if presegmenter is not None else default_model_path()
            name = f"shipped: {path.name}"
        else:
            path = resolve_model_file(model)
            name = str(path)
        from spinesegdiff.pipelines.backends.compiled_segmenter import compiled_segmenter

        compiled = compiled_segmenter(path, name, device=device, settings=settings, quiet=quiet,
                                      presegmenter=presegmenter)
        if compiled is not None:
            compiled.quiet = quiet
            return compiled  # type: ignore[return-value]
        from spinesegdiff.models import is_diffusion_model
        network, config, payload = load_model(path, map_location="cpu")  # a bad model file fails first
        target = resolve_device(device, quiet=quiet)
        if not is_diffusion_model(config):
            raise InputError(path, "is a segmentation U-Net: pass it as the presegmenter (--preseg-model), and "
                                   "a diffusion model as --model")
        if config.variant in SLAB_VARIANTS:
            raise InputError(path, f"is a {config.variant} model of sagittal slabs; it is scored by spinesegdiff "
                                   "evaluate (--slab-cache), and cannot segment slices or scans here")
        if presegmenter is not None and hasattr(presegmenter, "torch_twin") and (
                (settings or SamplerSettings()).backend == "torch" or target.type != "cpu"):
            presegmenter = presegmenter.torch_twin(target)
        segmenter = cls(network, config, payload.get("train_config"), device=target, settings=settings,
                        model_name=name, presegmenter=presegmenter,
                        scheduler_config=checkpoint_scheduler(payload, path))
        segmenter.quiet = quiet
        return segmenter

    def describe(self) -> dict[str, Any]:
        """Sampler settings as run (fusion and precision resolved), for reports."""
        import torch

        precision = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(self.dtype, str(self.dtype))
        described = self.settings.to_dict() | {"fusion": self.fusion, "precision": precision,
                                               "backend": self.backend}
        if self.presegmenter is not None:
            described |= {"presegmenter": self.presegmenter.name, "refine_steps": self.settings.refine_steps()}
        return described

    @property
    def fusion(self) -> str:
        if self.settings.fusion is not None:
            return self.settings.fusion
        return "uncertainty" if self.model_config.variant == "diffunet2d" else "exp"

    def segment(self, images_u8: np.ndarray, *, reference_procedure: bool = False,
                reference_steps: int = 50, progress: Callable[[int], object] | None = None) -> SliceSegmentation:
        """Segment ``(N, 320, 320)`` ``uint8`` slices (0..255, the cache's range).

        With ``reference_procedure`` the authors' procedure runs instead (S chains of ``reference_steps``
        steps one after another), for benchmarks. ``progress`` is called with the number of slices finished
        after each batch of ``settings.images_per_batch`` slices (a progress bar's ``update``).
        """
        import torch

        images = np.asarray(images_u8)
        if images.ndim == 2:
            images = images[None]
        presegmentation = None
        if self.presegmenter is not None and not reference_procedure:
            presegmentation = np.asarray(self.presegmenter(images), dtype=np.float32)
            if self.settings.preseg_steps == 0:
                from spinesegdiff.pipelines.backends.numpy_sampler import presegmentation_summary

                return presegmentation_summary(presegmentation)
        with torch.inference_mode():
            parts = self._sample_chunks(images, presegmentation, reference_procedure, reference_steps, progress)

        def stack(name: str, dtype=np.float32) -> np.ndarray:
            return np.concatenate([getattr(r, name).float().cpu().numpy() for r in parts]).astype(dtype)

        return SliceSegmentation(
            probabilities=stack("probabilities"),
            class_probabilities=stack("class_probabilities"),
            labels=stack("labels", np.uint8),
            uncertainty=stack("uncertainty"),
            structure_uncertainty=stack("structure_uncertainty"),
            variance=stack("variance"),
            network_calls=sum(r.num_network_calls for r in parts),
        )

    def _sample_chunks(self, images: np.ndarray, presegmentation: np.ndarray | None, reference_procedure: bool,
                       reference_steps: int, progress: Callable[[int], object] | None) -> list[Any]:
        """The sampler over ``settings.images_per_batch`` images at a time, one generator for all."""
        import torch

        from spinesegdiff.pipelines.sampling import sample_reference_procedure, sample_segmentation

        settings = self.settings
        generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        parts: list[Any] = []
        for start in range(0, len(images), settings.images_per_batch):
            stop = start + settings.images_per_batch
            chunk = torch.from_numpy(to_network_range(images[start:stop]))[:, None].to(self.device)
            common = dict(scheduler=self.scheduler, num_samples=settings.num_samples,
                          fuse_steps=settings.fuse_steps, generator=generator,
                          prediction_type=self.prediction_type, fusion=self.fusion)
            if reference_procedure:
                result = sample_reference_procedure(self.model, chunk, num_steps=reference_steps, **common)
            elif presegmentation is not None:
                steps = settings.refine_steps()
                start_mask = torch.from_numpy(presegmentation[start:stop, 1:]).to(self.device)
                result = sample_segmentation(self.model, chunk, num_steps=steps, start_mask=start_mask,
                                             start_timestep=settings.preseg_steps,
                                             **(common | {"fuse_steps": min(settings.fuse_steps, steps)}))
            else:
                result = sample_segmentation(self.model, chunk, num_steps=settings.num_steps, **common)
            parts.append(result)
            if progress is not None:
                progress(len(chunk))
        return parts
