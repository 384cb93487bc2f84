"""Setting a training run up: device and processes, run folder, data, networks and presegmenters.

Nothing here changes global state beyond what a run needs (the process group under ``torchrun``, the CUDA
device of this process); PyTorch's thread count is the caller's (the command line sets it from the config).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from spinesegdiff.data.cache import SliceCache
from spinesegdiff.data.folds import FoldData, fold_data, open_data, run_fold_settings
from spinesegdiff.data.splits import save_split
from spinesegdiff.devices import resolve_device
from spinesegdiff.diffusion import DDIMScheduler
from spinesegdiff.errors import InputError, SpineSegDiffError
from spinesegdiff.files import atomic_write_text
from spinesegdiff.models import ModelConfig, build_model, is_diffusion_model, model_prediction_type
from spinesegdiff.models.checkpoint import load_checkpoint, resolve_model_file
from spinesegdiff.pipelines.presegmenters import CrossFittedPresegmenter
from spinesegdiff.training.batches import SliceNeighbours, run_neighbours
from spinesegdiff.training.config import TrainConfig
from spinesegdiff.training.slab_batches import SlabData, check_slab_augmentation, fold_slabs


@dataclass(frozen=True)
class Run:
    """What a training process works with: where it runs, what it writes, the data (and, for thick-slice
    augmentation, each cached slice's neighbours; for a slab network, the fold's slabs), the network's
    configuration and the noise scheduler."""

    device: torch.device
    rank: int
    world: int
    out: Path
    cache: SliceCache
    data: FoldData
    model_config: ModelConfig
    scheduler: DDIMScheduler
    neighbours: SliceNeighbours | None = None
    slabs: SlabData | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def num_training_items(self) -> int:
        """What an epoch goes through once: training slabs for a slab network, else training slices."""
        return len(self.slabs.train) if self.slabs is not None else len(self.data.train)

    @property
    def diffusion(self) -> bool:
        return is_diffusion_model(self.model_config)

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"


def make_scheduler(config: TrainConfig, model_config: ModelConfig) -> DDIMScheduler:
    """The run's DDIM scheduler: its scheduler configuration and the network's prediction type."""
    return DDIMScheduler(config.scheduler.noise_schedule(), prediction_type=model_prediction_type(model_config))


def _distributed() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` under torchrun, else ``(0, 0, 1)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _start_processes(config: TrainConfig, *, progress: bool) -> tuple[torch.device, int, int]:
    """``(device, rank, world size)``; under torchrun the process group is started (NCCL on GPUs, else Gloo)."""
    rank, local_rank, world = _distributed()
    if world == 1:
        return resolve_device(config.runtime.device, quiet=not progress), rank, world
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() and config.runtime.device != "cpu" else "gloo"
    dist.init_process_group(backend=backend)
    device = torch.device(f"cuda:{local_rank}") if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    return device, rank, world


def stop_processes(run: Run) -> None:
    """Wait for every process and end the process group (under torchrun)."""
    if run.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def _open_run_folder(out: Path, *, resume: bool) -> None:
    if (out / "last.pt").exists() and not resume:
        raise InputError(out, "already holds a training run; pass --resume to continue it or choose a new --out")
    if resume and not (out / "last.pt").exists():
        raise InputError(out, "has no last.pt to resume from")
    out.mkdir(parents=True, exist_ok=True)


def set_up_run(config: TrainConfig, *, resume: bool, progress: bool) -> Run:
    """Start the processes, check the run folder, open the data (rank 0 caches a SPIDER folder first; a slab
    network's slabs are stacked from it) and write ``config.json`` and ``splits_final.json``."""
    device, rank, world = _start_processes(config, progress=progress)
    out = Path(config.out)
    _open_run_folder(out, resume=resume)
    if world > 1 and rank != 0:
        torch.distributed.barrier()  # rank 0 builds the cache first (from a SPIDER folder)
    cache = open_data(config.data, config.out, quiet=not (progress and rank == 0))
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    data = fold_data(config.folds, cache)
    if not data.train:
        raise InputError(config.data, "no training slices for this fold")
    model_config = config.model_config()
    slabs = None
    if model_config.spatial_dims == 3:
        try:
            check_slab_augmentation(config.augment)
        except ValueError as err:
            raise SpineSegDiffError(f"{model_config.variant}: {err}") from err
        slabs = fold_slabs(cache, data)
    if rank == 0:
        atomic_write_text(out / "config.json", json.dumps(
            {"train": config.to_dict(), "model": model_config.to_dict(), "scheduler": config.scheduler.to_dict()},
            indent=2, default=str))
        save_split(data.split, out / "splits_final.json")
    return Run(device=device, rank=rank, world=world, out=out, cache=cache, data=data, model_config=model_config,
               scheduler=make_scheduler(config, model_config), neighbours=run_neighbours(cache, config.augment),
               slabs=slabs)


def build_network(config: TrainConfig, run: Run, *, resume: bool) -> torch.nn.Module:
    """The network on the run's device, initialised by the global RNG (seeded by the caller) or, with
    ``init_from`` on a fresh run, from that checkpoint's EMA weights."""
    net = build_model(run.model_config).to(run.device)
    init_from = config.refinement.init_from
    if init_from and not resume:
        initial = load_checkpoint(resolve_model_file(init_from), map_location="cpu")
        if ModelConfig.from_dict(initial["model_config"]) != run.model_config:
            raise InputError(init_from, "holds a network of another configuration than this run's")
        net.load_state_dict(initial.get("ema") or initial["model"])
    return net


def load_crossfitted_presegmenter(config: TrainConfig, cache: SliceCache, device: torch.device
                                  ) -> CrossFittedPresegmenter:
    """The run's ``preseg_models`` with, for each, the patients it trained or validated on."""
    from spinesegdiff.pipelines.presegmenters import UNetPresegmenter

    models, seen = [], []
    for path in config.refinement.preseg_models:
        presegmenter = UNetPresegmenter.from_checkpoint(path, device=device)
        try:
            _, _, its_folds = run_fold_settings(presegmenter.train_config or {})
        except (TypeError, ValueError) as err:
            raise InputError(path, f"its training settings cannot be read ({err})") from err
        its_data = fold_data(its_folds, cache)
        seen.append({cache.entries[i].patient for i in [*its_data.train, *its_data.validation]})
        models.append(presegmenter)
    return CrossFittedPresegmenter(models, seen)


def run_presegmenter(config: TrainConfig, run: Run) -> CrossFittedPresegmenter | None:
    """The cross-fitted presegmenter of a refinement run (``None`` without ``preseg_models``), checked to cover
    every training and validation patient with a U-Net that never saw it."""
    if not config.refinement.preseg_models:
        return None
    if not run.diffusion:
        raise SpineSegDiffError("presegmentation refinement trains a diffusion variant, not a U-Net")
    if run.slabs is not None:
        raise SpineSegDiffError("presegmentation refinement trains a 2D diffusion variant, not a slab network")
    presegmenter = load_crossfitted_presegmenter(config, run.cache, run.device)
    try:
        presegmenter.check_covers([run.cache.entries[i].patient for i in [*run.data.train, *run.data.validation]])
    except ValueError as err:
        raise SpineSegDiffError(str(err)) from err
    return presegmenter
