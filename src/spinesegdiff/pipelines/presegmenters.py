"""Presegmenters: a baseline segmenter whose mask the diffusion model refines (paper section 2.1.2).

A presegmenter is any callable ``uint8 (N, H, W) slices -> (N, 4, H, W) float32 class probabilities``
(background, canal, vertebra, disc; summing to 1). Two ship with the package:

* :class:`UNetPresegmenter`, the built-in segmentation U-Net (``--variant unet``): trains in minutes on a CPU;
* :class:`spinesegdiff.pipelines.nnunet.NnUNetPresegmenter`, a real nnU-Net v2 2d model (optional extra).

:class:`CrossFittedPresegmenter` serves training: every slice is presegmented by a U-Net that never saw its
patient, so the refiner learns from the errors a presegmenter makes on unseen scans.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from spinesegdiff.data.preprocess import to_network_range
from spinesegdiff.errors import InputError, SpineSegDiffError
from spinesegdiff.pipelines.settings import PRESEGMENTERS

if TYPE_CHECKING:  # PyTorch is imported where it is used: the compiled U-Net runs without it
    import torch


class Presegmenter(Protocol):
    """``(N, H, W)`` ``uint8`` slices -> ``(N, 4, H, W)`` float32 class probabilities."""

    name: str

    def __call__(self, images_u8: np.ndarray) -> np.ndarray: ...


class UNetPresegmenter:
    """The built-in segmentation U-Net as a presegmenter.

    Args:
        net: a :class:`~spinesegdiff.models.SegmentationUNet` (any device).
        device: where to run it.
        batch: slices per forward pass.
        train_config: the training settings saved with the weights (which patients it saw), if known.
    """

    name = "unet"

    def __init__(self, net: torch.nn.Module, *, device: torch.device | str = "cpu", batch: int = 8,
                 train_config: dict | None = None) -> None:
        import torch

        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.batch = batch
        self.train_config = train_config

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, *, device: torch.device | str = "cpu"
                        ) -> UNetPresegmenter:
        """A U-Net checkpoint or run folder; ``None``: the U-Net shipped with the package."""
        from spinesegdiff.models.checkpoint import load_model

        file = _unet_file(path)
        net, config, payload = load_model(file, map_location="cpu")
        if config.variant != "unet":
            raise InputError(file, f"is a {config.variant!r} model, not a segmentation U-Net (--variant unet)")
        return cls(net, device=device, train_config=payload.get("train_config"))

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` image in ``[-1, 1]`` -> ``(B, 4, H, W)`` class probabilities (float32)."""
        import torch

        with torch.inference_mode():
            return self.net(image.to(self.device)).float().softmax(dim=1)

    def __call__(self, images_u8: np.ndarray) -> np.ndarray:
        import torch

        images = np.asarray(images_u8)
        outputs = []
        for start in range(0, len(images), self.batch):
            chunk = torch.from_numpy(to_network_range(images[start:start + self.batch]))[:, None]
            outputs.append(self.probabilities(chunk).cpu().numpy())
        return np.concatenate(outputs).astype(np.float32)


CACHED_SLICES = 16
"""Presegmented slices :class:`CompiledPresegmenter` keeps (1.6 MB each)."""


class CompiledPresegmenter(UNetPresegmenter):
    """The built-in U-Net as a compiled OpenVINO graph, run without PyTorch
    (:mod:`~spinesegdiff.pipelines.backends.compiled`); same outputs as :class:`UNetPresegmenter` to float
    round-off, and usable wherever one is (:meth:`probabilities` takes and gives tensors).

    Args:
        source: the U-Net's model file (for :meth:`torch_twin`).
        folder, manifest: its bundle.
        batch: slices per pass.
    """

    name = "unet"
    device = "cpu"

    def __init__(self, source: Path, folder: Path, manifest: dict, *, batch: int = 8) -> None:
        from spinesegdiff.pipelines.backends.compiled import CompiledGraphs

        # no network in this process: UNetPresegmenter's constructor (which moves one) is not called

        self.source = source
        self.batch = batch
        self._recent: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.train_config = manifest.get("train_config") or None
        self.graphs = CompiledGraphs(folder, manifest, precision="fp32")

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, *, device: torch.device | str = "cpu",  # type: ignore[override]
                        cache: Path | None = None) -> CompiledPresegmenter | None:
        """The compiled U-Net of a checkpoint or run folder (``None``: the shipped one), converted now when its
        bundle is missing; ``None`` without OpenVINO, with an unwritable cache, or for a file that is not a
        segmentation U-Net (:meth:`UNetPresegmenter.from_checkpoint` then says why).

        Raises:
            MissingInputError, InputError: no such file, or not a model file at all.
        """
        from spinesegdiff.pipelines.backends.compiled import build_compiled
        from spinesegdiff.pipelines.backends.openvino import openvino_available

        if not openvino_available():
            return None
        file = _unet_file(path)
        return build_compiled(file, lambda folder, manifest: cls(file, folder, manifest),
                              variant_check=lambda config: config.variant == "unet", cache=cache)

    def torch_twin(self, device: torch.device | str = "cpu") -> UNetPresegmenter:
        """The same U-Net in PyTorch (for ``--backend torch`` and GPUs)."""
        return UNetPresegmenter.from_checkpoint(self.source, device=device)

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` image in ``[-1, 1]`` -> ``(B, 4, H, W)`` class probabilities (float32, on its device)."""
        import torch

        outputs = self.graphs.run("unet", [image.detach().float().cpu().numpy()])[0]
        return torch.from_numpy(outputs).to(image.device)

    def __call__(self, images_u8: np.ndarray) -> np.ndarray:
        """Slices it has just seen (the mid-sagittal choice presegments the slice it then hands to the sampler)
        are answered from a small cache of the last :data:`CACHED_SLICES` slices, keyed by their bytes."""
        images = np.asarray(images_u8, dtype=np.uint8)
        keys = [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]
        missing = [k for k, key in enumerate(keys) if key not in self._recent]
        for start in range(0, len(missing), self.batch):
            rows = missing[start:start + self.batch]
            outputs = self.graphs.run("unet", [to_network_range(images[rows])[:, None]])[0].astype(np.float32)
            for row, output in zip(rows, outputs, strict=True):
                self._recent[keys[row]] = output
        result = np.stack([self._recent[key] for key in keys])
        for key in keys:
            self._recent.move_to_end(key)
        while len(self._recent) > CACHED_SLICES:
            self._recent.popitem(last=False)
        return result  # np.stack made a new array: the cache is not exposed


def _unet_file(path: str | Path | None) -> Path:
    """A U-Net checkpoint or run folder as a file; ``None``: the shipped U-Net."""
    from spinesegdiff.models.checkpoint import resolve_model_file

    if path is None:
        from spinesegdiff.assets import default_presegmenter_path

        return default_presegmenter_path()
    return resolve_model_file(path)


class CrossFittedPresegmenter:
    """Presegments training slices with U-Nets that never saw their patients.

    Args:
        models: U-Net presegmenters.
        seen_patients: for each model, the patients it trained or validated on.
    """

    def __init__(self, models: Sequence[UNetPresegmenter], seen_patients: Sequence[set[str]]) -> None:
        if len(models) != len(seen_patients) or not models:
            raise ValueError("need one set of seen patients per presegmenter, and at least one presegmenter")
        self.models = list(models)
        self.seen_patients = [set(p) for p in seen_patients]

    def model_for(self, patient: str) -> int:
        """Index of the first model that never saw ``patient``; ``ValueError`` if every model saw it."""
        for index, seen in enumerate(self.seen_patients):
            if patient not in seen:
                return index
        raise ValueError(f"every presegmenter trained on patient {patient}: no unbiased presegmentation for it")

    def check_covers(self, patients: Sequence[str]) -> None:
        uncovered = sorted({p for p in patients if all(p in seen for seen in self.seen_patients)}, key=str)
        if uncovered:
            raise ValueError(f"no presegmenter is blind to patients {', '.join(uncovered)}: train cross-fitted "
                             "U-Nets with --holdout-patients")

    def probabilities(self, image: torch.Tensor, patients: Sequence[str]) -> torch.Tensor:
        """``(B, 1, H, W)`` images in ``[-1, 1]`` of ``patients`` -> ``(B, 4, H, W)`` class probabilities."""
        import torch

        output = torch.empty(image.shape[0], 4, *image.shape[-2:], device=image.device)
        choice = np.asarray([self.model_for(p) for p in patients])
        for index in np.unique(choice):
            rows = torch.from_numpy(np.flatnonzero(choice == index)).to(image.device)
            output[rows] = self.models[index].probabilities(image[rows]).to(image.device)
        return output


def load_presegmenter(kind: str, model: str | Path | None = None, *, device: str = "cpu",
                      backend: str = "auto") -> Presegmenter | None:
    """``none`` -> ``None``; ``unet`` -> a U-Net run or checkpoint (default: the shipped one): on the CPU with
    ``backend`` ``auto`` or ``openvino`` the compiled U-Net (:class:`CompiledPresegmenter`) where OpenVINO is
    installed, else PyTorch's; ``nnunet`` -> an nnU-Net 2d model folder (required; its ``fold_all`` if present,
    else its first ``fold_<k>``)."""
    if kind == "none":
        return None
    if kind == "unet":
        compiled = CompiledPresegmenter.from_checkpoint(model) if str(device) == "cpu" and backend != "torch" \
            else None
        return compiled or UNetPresegmenter.from_checkpoint(model, device=device)
    if kind == "nnunet":
        from spinesegdiff.pipelines.nnunet import NnUNetPresegmenter

        if model is None:
            raise SpineSegDiffError("--preseg nnunet needs --preseg-model: an nnU-Net 2d model folder")
        folder = Path(model)
        folds = sorted(p.name.removeprefix("fold_") for p in folder.glob("fold_*") if p.is_dir())
        fold = "all" if "all" in folds else (folds[0] if folds else 0)
        return NnUNetPresegmenter(folder, fold=int(fold) if str(fold).isdigit() else fold, device=device)
    raise SpineSegDiffError(f"unknown presegmenter {kind!r}: choose one of {', '.join(PRESEGMENTERS)}")


def default_presegmenter_kind(*, user_model: bool) -> str:
    """The presegmenter when none is named: ``unet`` (the shipped U-Net, whose mask the shipped refiner refines)
    with the shipped models, ``none`` (sampling from noise) with a user's own diffusion model."""
    return "none" if user_model else "unet"


def resolve_presegmenter(kind: str | None, model: str | Path | None = None, *, user_model: bool,
                         preseg_steps: int | None = None, device: str = "auto",
                         backend: str = "auto") -> Presegmenter | None:
    """The one rule for choosing a presegmenter, for the command line and the Python API alike.

    Args:
        kind: ``none``, ``unet``, ``nnunet``, or ``None`` for :func:`default_presegmenter_kind`.
        model: the presegmenter's model (a U-Net run or checkpoint, an nnU-Net 2d model folder), or ``None``.
        user_model: whether the diffusion model is the user's own (``--model``) rather than the shipped one.
        preseg_steps: ``T_pre`` as asked for (``None``: not asked for); only meaningful with a presegmenter.
        device: ``auto``, ``cpu`` or ``cuda``.
        backend: the sampler's backend (``auto``, ``torch``, ``openvino``): the U-Net runs compiled on the CPU
            unless it is ``torch`` (:func:`load_presegmenter`).

    Returns:
        The loaded presegmenter, or ``None`` (sampling from noise).

    Raises:
        SpineSegDiffError: an unknown kind; a presegmenter model or ``T_pre`` without a presegmenter; ``nnunet``
            without its model folder.
    """
    if kind is None:
        kind = default_presegmenter_kind(user_model=user_model)
    if kind not in PRESEGMENTERS:
        raise SpineSegDiffError(f"unknown presegmenter {kind!r}: choose one of {', '.join(PRESEGMENTERS)}")
    if kind == "none":
        if model is not None or preseg_steps is not None:
            asked = "a presegmenter model" if model is not None else f"T_pre = {preseg_steps}"
            raise SpineSegDiffError(f"{asked} was given without a presegmenter: --preseg-model and --preseg-steps "
                                    "need --preseg unet or nnunet")
        return None
    from spinesegdiff.pipelines.backends.compiled import cpu_without_torch

    if cpu_without_torch(device, quiet=True):  # no GPU driver: the CPU, without importing PyTorch to ask
        return load_presegmenter(kind, model, device="cpu", backend=backend)
    from spinesegdiff.devices import resolve_device

    return load_presegmenter(kind, model, device=str(resolve_device(device, quiet=True)), backend=backend)
