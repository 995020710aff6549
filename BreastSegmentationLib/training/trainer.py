"""The training loop: RAdam + ReduceLROnPlateau + early stopping, best weights kept, resumable.

One call of :func:`fit` trains one model on one fold. Every epoch ends with a checkpoint written atomically
(model, optimiser, scheduler, best weights so far, history), so an interrupted run resumes from the last
finished epoch and loses at most the epoch in progress. Epoch ``e`` seeds its shuffling and augmentation
with ``seed + e``, which makes a resumed run follow the same course as an uninterrupted one.
"""

from __future__ import annotations

import copy
import csv
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import InputError
from ..inference.runtime import mixed_precision_dtype
from ..io.outputs import atomic_output_file
from ..progress import Progress, silent
from .distributed import DistributedContext

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.csv"


@dataclass
class OptimisationSettings:
    """Optimiser, schedule and stopping rules; defaults are seed 000's (authors' public code)."""

    epochs: int = 100
    batch_size: int = 8
    optimiser: str = "radam"
    learning_rate: float = 1e-3
    weight_decay: float = 3e-5
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    early_stopping_patience: int = 10
    amp: bool = True  # mixed precision: float16 on CUDA, bfloat16 on CPUs with native bf16
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.optimiser not in OPTIMISERS:
            raise InputError(f"optimiser must be one of {', '.join(OPTIMISERS)}, got {self.optimiser!r}")


#: RAdam is the papers' choice; its built-in warm-up spans about a thousand steps, so short trainings (a CPU
#: budget of a few thousand steps) learn faster with AdamW.
OPTIMISERS = {"radam": torch.optim.RAdam, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


@dataclass
class FitResult:
    """What one fold's training produced: the best weights and the per-epoch history."""

    best_epoch: int
    best_val_loss: float
    best_state: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False


def _loader(dataset: Dataset, settings: OptimisationSettings, shuffle: bool, epoch: int,
            context: DistributedContext) -> DataLoader:
    generator = torch.Generator().manual_seed(settings.seed + epoch)
    sampler = None
    if context.enabled:
        sampler = DistributedSampler(dataset, context.world_size, context.rank, shuffle=shuffle, seed=settings.seed)
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=settings.num_workers,
        drop_last=False,
    )


def _as_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch to ``device``; 2-D batches go channels-last, which is faster for convolutions on CPU and GPU."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images


def _run_epoch(model: torch.nn.Module, loader: DataLoader, loss_fn: Callable, device: torch.device,
               optimiser: torch.optim.Optimizer | None, scaler: torch.amp.GradScaler | None,
               precision: torch.dtype | None, progress: Progress, stage: str) -> tuple[float, float, int]:
    """One pass over ``loader``; trains when an optimiser is given. Returns (mean loss, dice, samples)."""
    training = optimiser is not None
    model.train(training)
    total_loss, samples, intersection, denominator = 0.0, 0, 0.0, 0.0
    with torch.set_grad_enabled(training):
        for step, batch in enumerate(loader, start=1):
            images = _as_input(batch["image"], device)
            labels = batch["label"].to(device, non_blocking=True).float()
            with torch.autocast(device_type=device.type, dtype=precision, enabled=precision is not None):
                logits = model(images)
            weights = batch.get("lesion_weight")
            extra = () if weights is None else (weights.to(device, non_blocking=True).float(),)
            loss = loss_fn(logits.float(), labels, *extra)  # in float32: Dice sums and logs need the precision
            if training:
                optimiser.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimiser)
                    scaler.update()
                else:
                    loss.backward()
                    optimiser.step()
            count = images.shape[0]
            total_loss += float(loss.detach()) * count
            samples += count
            predicted = (logits.detach() > 0).float()
            intersection += float((predicted * labels).sum())
            denominator += float(predicted.sum() + labels.sum())
            progress.update(stage, step / max(len(loader), 1))
    dice = 2.0 * intersection / denominator if denominator > 0 else 1.0
    return total_loss / max(samples, 1), dice, samples


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_output_file(path) as temporary:
        torch.save(state, temporary)


def _load_checkpoint(path: Path) -> dict | None:
    # weights_only: a checkpoint holds tensors and plain values only, never pickled objects.
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def _write_log(path: Path, history: list[dict]) -> None:
    with atomic_output_file(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def fit(
    model: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    train_dataset: Dataset,
    val_dataset: Dataset,
    settings: OptimisationSettings,
    work_dir: str | Path,
    device: torch.device,
    context: DistributedContext | None = None,
    progress: Progress | None = None,
) -> FitResult:
    """Train ``model`` on ``train_dataset``; keep the weights of the epoch with the lowest validation loss.

    ``loss_fn(logits, labels)`` also gets a batch's ``lesion_weight`` map when its samples have one.

    Resumes from ``work_dir/checkpoint.pt`` when one exists. Writes ``log.csv`` (one row per epoch) and the
    checkpoint in ``work_dir`` (main process only).
    """
    progress = progress or silent()
    context = context or DistributedContext()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimiser = OPTIMISERS[settings.optimiser](model.parameters(), lr=settings.learning_rate,
                                               weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, mode="min", factor=settings.plateau_factor, patience=settings.plateau_patience
    )
    precision = mixed_precision_dtype(device, settings.amp)
    scaler = torch.amp.GradScaler("cuda") if precision is torch.float16 else None
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if context.enabled else model

    start_epoch, best_epoch, best_loss, since_best = 0, -1, float("inf"), 0
    best_state, history, elapsed = _cpu_copy(model.state_dict()), [], 0.0
    checkpoint = _load_checkpoint(work_dir / CHECKPOINT_NAME)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        best_state, history = checkpoint["best_state"], checkpoint["history"]
        start_epoch, best_epoch = checkpoint["epoch"] + 1, checkpoint["best_epoch"]
        best_loss, since_best, elapsed = checkpoint["best_loss"], checkpoint["since_best"], checkpoint["seconds"]
        log.info("resuming %s at epoch %d", work_dir, start_epoch)

    stopped_early = since_best >= settings.early_stopping_patience
    for epoch in range(start_epoch, settings.epochs):
        if stopped_early:
            break
        torch.manual_seed(settings.seed + epoch)
        started = time.perf_counter()
        stage = f"epoch {epoch + 1}/{settings.epochs}"
        train_loss, train_dice, n_train = _run_epoch(
            net, _loader(train_dataset, settings, True, epoch, context), loss_fn, device, optimiser, scaler,
            precision, progress, f"{stage} train")
        val_loss, val_dice, n_val = _run_epoch(
            net, _loader(val_dataset, settings, False, epoch, context), loss_fn, device, None, None,
            precision, progress, f"{stage} validation")
        train_loss, n_train = context.mean(train_loss, n_train)
        val_loss, n_val = context.mean(val_loss, n_val)
        scheduler.step(val_loss)
        seconds = time.perf_counter() - started
        elapsed += seconds
        if val_loss < best_loss:
            best_loss, best_epoch, since_best = val_loss, epoch, 0
            best_state = _cpu_copy(model.state_dict())
        else:
            since_best += 1
        stopped_early = since_best >= settings.early_stopping_patience
        history.append({
            "epoch": epoch + 1, "train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6),
            "train_dice": round(train_dice, 6), "val_dice": round(val_dice, 6),
            "learning_rate": optimiser.param_groups[0]["lr"], "seconds": round(seconds, 3),
            "train_samples": n_train, "val_samples": n_val,
        })
        log.info("%s: train loss %.4f, val loss %.4f, val dice %.3f (%.1f s)", stage, train_loss, val_loss,
                 val_dice, seconds)
        if context.is_main:
            _write_log(work_dir / LOG_NAME, history)
            _save_checkpoint(work_dir / CHECKPOINT_NAME, {
                "epoch": epoch, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(), "best_state": best_state, "best_epoch": best_epoch,
                "best_loss": best_loss, "since_best": since_best, "history": history, "seconds": elapsed,
                "settings": asdict(settings),
            })
        context.barrier()
    return FitResult(best_epoch + 1, best_loss, copy.copy(best_state), history, elapsed, stopped_early)
