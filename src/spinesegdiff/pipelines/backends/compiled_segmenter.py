""":class:`CompiledSegmenter`: a :class:`~spinesegdiff.pipelines.segmenter.Segmenter` without PyTorch.

The image encoder, the denoiser and the presegmenter run as compiled OpenVINO graphs of a converted bundle
(:mod:`~spinesegdiff.pipelines.backends.compiled`), and the multi-sample DDIM sampler, the fusion and the
entropy run in NumPy (:mod:`~spinesegdiff.pipelines.backends.numpy_sampler`), with the noise of
``torch.Generator().manual_seed(seed)``: for the same seed, the labels of the PyTorch path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spinesegdiff.data.preprocess import to_network_range
from spinesegdiff.errors import SpineSegDiffError
from spinesegdiff.models.config import SLAB_VARIANTS, ModelConfig
from spinesegdiff.pipelines.backends import numpy_sampler
from spinesegdiff.pipelines.backends.compiled import (
    CompiledGraphs,
    TorchCompatibleNormal,
    build_compiled,
    cpu_without_torch,
    repeat_rows,
)
from spinesegdiff.pipelines.results import SliceSegmentation, concatenate_segmentations
from spinesegdiff.pipelines.settings import SamplerSettings


def compiled_segmenter(model_file: Path, model_name: str, *, device: str = "auto",
                       settings: SamplerSettings | None = None, quiet: bool = False,
                       presegmenter=None, cache: Path | None = None) -> CompiledSegmenter | None:
    """A :class:`CompiledSegmenter` for ``model_file`` where the compiled path applies, else ``None``.

    It applies on the CPU (``device`` ``cpu``, or ``auto`` without a GPU driver), with OpenVINO installed,
    ``backend`` ``auto`` or ``openvino``, ``eta = 0``, and a diffusion model whose bundle exists or can be
    written (converting it needs PyTorch, once per model file).
    """
    from spinesegdiff.pipelines.backends.openvino import openvino_available

    settings = settings or SamplerSettings()
    if settings.backend == "torch" or settings.eta != 0.0 or device not in ("auto", "cpu"):
        return None
    if not openvino_available() or not cpu_without_torch(device, quiet=True):
        return None
    if presegmenter is not None and not hasattr(presegmenter, "torch_twin") and hasattr(presegmenter, "device") \
            and str(presegmenter.device) != "cpu":
        return None
    segmenter = build_compiled(
        model_file, lambda folder, manifest: CompiledSegmenter(folder, manifest, settings=settings,
                                                               presegmenter=presegmenter, model_name=model_name),
        variant_check=lambda config: config.variant != "unet" and config.variant not in SLAB_VARIANTS, cache=cache)
    if segmenter is not None:
        cpu_without_torch(device, quiet=quiet)  # says "no CUDA GPU found" once, as the PyTorch path would
    return segmenter


class CompiledSegmenter:
    """A diffusion model's bundle compiled for the CPU, with :class:`Segmenter`'s interface (``segment``,
    ``describe``, ``model_name``, ``model_config``, ``train_config``, ``device``, ``settings``, ``presegmenter``).

    Args:
        folder, manifest: the bundle (:func:`~spinesegdiff.pipelines.backends.compiled.compiled_bundle`);
            OpenVINO's ``RuntimeError`` when it cannot be compiled.
        settings: sampler settings (``eta = 0``).
        presegmenter: any presegmenter (``uint8 (N, H, W)`` -> ``(N, 4, H, W)`` probabilities), or ``None``.
        model_name: how reports name the model.
    """

    backend = "openvino"
    device = "cpu"
    quiet = True

    def __init__(self, folder: Path, manifest: dict[str, Any], *, settings: SamplerSettings | None = None,
                 presegmenter=None, model_name: str = "") -> None:
        from spinesegdiff.pipelines.segmenter import checked_settings

        self.alphas_cumprod = np.asarray(manifest["alphas_cumprod"], dtype=np.float64)
        self.settings = checked_settings(settings, presegmenter, len(self.alphas_cumprod), model_name)
        if self.settings.eta != 0.0:
            raise SpineSegDiffError("the compiled CPU path samples with eta = 0 only: use --backend torch")
        self.model_config = ModelConfig.from_dict(manifest["model_config"])
        self.train_config = manifest.get("train_config") or {}
        self.presegmenter = presegmenter
        self.model_name = model_name
        self.prediction_type = "epsilon" if self.model_config.variant == "iisdm" else "sample"
        self.has_image_encoder = bool(manifest["has_image_encoder"])
        self.graphs = CompiledGraphs(folder, manifest, precision=self.settings.precision)

    @property
    def fusion(self) -> str:
        if self.settings.fusion is not None:
            return self.settings.fusion
        return "uncertainty" if self.model_config.variant == "diffunet2d" else "exp"

    def describe(self) -> dict[str, Any]:
        """Sampler settings as run (fusion and precision resolved), for reports."""
        described = self.settings.to_dict() | {"fusion": self.fusion, "precision": self.graphs.precision,
                                               "backend": self.backend}
        if self.presegmenter is not None:
            described |= {"presegmenter": self.presegmenter.name, "refine_steps": self.settings.refine_steps()}
        return described

    def segment(self, images_u8: np.ndarray, *, reference_procedure: bool = False, reference_steps: int = 50,
                progress: Callable[[int], object] | None = None) -> SliceSegmentation:
        """Segment ``(N, 320, 320)`` ``uint8`` slices -> a :class:`SliceSegmentation`, as the PyTorch path does.

        ``progress`` is called with the number of slices finished after each batch (a progress bar's ``update``).

        Raises:
            SpineSegDiffError: ``reference_procedure`` (the authors' procedure runs in the PyTorch path only).
        """
        if reference_procedure:
            raise SpineSegDiffError("the authors' procedure runs through the PyTorch sampler: use --backend torch")
        images = np.asarray(images_u8)
        if images.ndim == 2:
            images = images[None]
        presegmentation = None
        if self.presegmenter is not None:
            presegmentation = np.asarray(self.presegmenter(images), dtype=np.float32)
            if self.settings.preseg_steps == 0:
                return numpy_sampler.presegmentation_summary(presegmentation)
        generator = TorchCompatibleNormal(self.settings.seed)
        parts = []
        for start in range(0, len(images), self.settings.images_per_batch):
            stop = start + self.settings.images_per_batch
            mask = None if presegmentation is None else presegmentation[start:stop, 1:]
            parts.append(self._sample(to_network_range(images[start:stop])[:, None], mask, generator))
            if progress is not None:
                progress(len(parts[-1].labels))
        return concatenate_segmentations(parts)

    def _sample(self, image: np.ndarray, start_mask: np.ndarray | None,
                generator: TorchCompatibleNormal) -> SliceSegmentation:
        """One batch: ``(B, 1, H, W)`` images in [-1, 1], the presegmentation's structures or ``None``."""
        settings = self.settings
        samples = image.shape[0] * settings.num_samples
        noise = generator.normal((samples, self.model_config.mask_channels, *image.shape[-2:]))
        if start_mask is None:
            timesteps = numpy_sampler.ddim_timesteps(settings.num_steps, len(self.alphas_cumprod))
            fuse_steps = settings.fuse_steps
        else:
            steps = settings.refine_steps()
            timesteps = numpy_sampler.ddim_timesteps(steps, len(self.alphas_cumprod), settings.preseg_steps)
            fuse_steps = min(settings.fuse_steps, steps)
        if not 1 <= fuse_steps <= len(timesteps):
            raise SpineSegDiffError(f"fuse_steps must lie in [1, {len(timesteps)}], got {fuse_steps}")
        features = self.graphs.run("encoder", [image]) if self.has_image_encoder else []
        images, features = repeat_rows(image, samples), [repeat_rows(f, samples) for f in features]

        def network(x: np.ndarray, t: int) -> np.ndarray:
            steps = np.full((x.shape[0],), t, dtype=np.int64)
            return self.graphs.run("denoiser", [x, steps, images, *features])[0]

        return numpy_sampler.sample_segmentation(
            network, alphas_cumprod=self.alphas_cumprod, batch=image.shape[0], num_samples=settings.num_samples,
            timesteps=timesteps, fuse_steps=fuse_steps, noise=noise, prediction_type=self.prediction_type,
            fusion=self.fusion, start_mask=start_mask)
