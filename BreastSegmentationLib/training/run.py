"""A whole training run: dataset checks, patient-level folds, one model per fold, held-out test, model cards.

Output folder ``<output_dir>/<name>/``::

    config.json  split.json  results.json  results.md
    fold_0/  log.csv  loss.png  checkpoint.pt  model/<name>_fold0.{json,safetensors}
    ...
    model/<name>.{json,safetensors}      the fold with the lowest validation loss, ready for ``breastseg segment``

Cases are read and prepared once (the same preprocessing as inference), then every fold trains from memory.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, RandCropByLabelClassesd, RandCropByPosNegLabeld

from ..data.augmentation import KEYS, training_transforms
from ..data.datasets import TASK_MASKS, load_dataset
from ..data.crops import mask_box
from ..data.patches import enhancing_classes
from ..data.preprocessing import PreparedCase, prepare_checked, select_channels
from ..data.slices import STORAGE_DTYPE, Approach, SliceDataset
from ..errors import InputError
from ..evaluation.carbon import EnergyMeter
from ..evaluation.lesions import match_lesions
from ..evaluation.metrics import segmentation_metrics
from ..inference.runtime import predict_slices, resolve_device
from ..models.cards import ModelCard, load_model, load_networks, save_model
from ..models.registry import build_model
from ..models.widening import widen_inputs
from ..progress import Progress, silent
from ..reports.curves import plot_loss_curves
from ..reports.tables import markdown_table, write_json
from .config import TrainConfig
from .distributed import init_distributed, shutdown_distributed
from .losses import build_loss
from .splits import Fold, split_patients
from .trainer import FitResult, fit

log = logging.getLogger(__name__)

# Breast slices without lesion have no foreground to centre a patch on; MONAI warns for each such slice and then
# samples anywhere, which is what is wanted here.
warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)


@dataclass
class FoldOutcome:
    """One fold's training figures, test metrics and where its model card is."""

    fold: int
    result: FitResult
    energy: dict
    test: dict
    card_path: Path


#: Key of the patch-sampling class map while a patch is chosen.
SAMPLING = "sampling"


def _first_patch(samples: list[dict]) -> dict:
    return {key: value for key, value in samples[0].items() if key != SAMPLING}


@dataclass
class SamplingClasses:
    """Adds the sampling map of :func:`enhancing_classes` to a 2-D sample, from its ``channel`` (the subtraction)."""

    channel: int

    def __call__(self, sample: dict) -> dict:
        classes = enhancing_classes(np.asarray(sample["image"][self.channel]), np.asarray(sample["label"][0]))
        return {**sample, SAMPLING: torch.from_numpy(classes[None])}


def _patch_sampling(config: TrainConfig) -> list:
    """Random patch choice: on the label, on strongly enhancing tissue (hard negatives) or anywhere, by ratio.

    MONAI returns a list of patches; one per slice per epoch keeps epochs short and varied.
    """
    patches = config.patches
    if not patches.enhancing_ratio:
        return [RandCropByPosNegLabeld(KEYS, "label", patches.size, pos=patches.foreground_ratio,
                                       neg=1.0 - patches.foreground_ratio, num_samples=1, allow_smaller=True,
                                       allow_missing_keys=True),
                _first_patch]
    ratios = [1.0 - patches.foreground_ratio - patches.enhancing_ratio, patches.foreground_ratio,
              patches.enhancing_ratio]
    return [SamplingClasses(config.inputs.index("subtraction")),
            RandCropByLabelClassesd(KEYS, SAMPLING, patches.size, ratios=ratios, num_classes=len(ratios),
                                    num_samples=1, allow_smaller=True, warn=False, allow_missing_keys=True),
            _first_patch]


def slice_training_transform(config: TrainConfig) -> Compose | None:
    """Patch sampling (when configured) followed by augmentation (domain randomisation)."""
    steps = _patch_sampling(config) if config.patches.size is not None else []
    if config.augmentation > 0:
        steps.append(training_transforms(2, config.augmentation, config.inputs, config.contrast_uptake_range))
    # map_items=False: the crop's one-patch list reaches _first_patch whole instead of item by item.
    return Compose(steps, map_items=False) if steps else None


def training_view(config: TrainConfig, case: PreparedCase) -> PreparedCase:
    """The channels the model takes, held as float16 (:data:`STORAGE_DTYPE`); only the breast's (and lesions')
    slices and rows when the datasets never look elsewhere (breast-masked inputs from breast or lesion slices). Both
    keep datasets of a hundred studies and more in memory; the slice datasets cut their slices from these arrays."""
    case = select_channels(case, config.inputs)
    approach = Approach(config.approach)
    if approach.uses_brs and (config.slices == "breast" or approach.lesion_slices_only):
        case = case.cropped(mask_box(case.breast, case.lesions))
    return dataclasses.replace(case, image=case.image.astype(STORAGE_DTYPE))


def make_slice_dataset(config: TrainConfig, cases: list[PreparedCase], training: bool,
                       ov_height: int | None = None) -> SliceDataset:
    """The 2-D dataset of a configuration's task and approach (augmented when ``training``)."""
    return SliceDataset(
        cases,
        approach=config.approach,
        task=config.task,
        transform=slice_training_transform(config) if training else None,
        ov_height=ov_height,
        safe_distance_mm=config.safe_distance_mm,
        breast_slices=config.slices == "breast",
        lesion_slice_repeats=config.lesion_slice_repeats if training else 1,
        lesion_visits=config.lesion_visits if training else None,
        lesion_weight_mm3=config.lesion_weight_mm3 if training else None,
    )


def predict_case(model: torch.nn.Module, dataset: SliceDataset, case: PreparedCase,
                 device: torch.device) -> np.ndarray:
    """Probabilities on ``case``'s prepared grid for the slices (and crop) the dataset's approach uses."""
    case_index = dataset.case_ids.index(case.case_id)
    images = np.moveaxis(dataset.input_slices(case_index), 0, 1)  # (C, N, H, W): slices as a volume
    probabilities = predict_slices([model], images, range(images.shape[1]), device)
    box = dataset.boxes.get(case.case_id)
    rows, cols = (box.rows, box.cols) if box is not None else ((0, case.shape[1]), (0, case.shape[2]))
    volume = np.zeros(case.shape, dtype=np.float32)
    volume[dataset.slice_numbers[case_index], rows[0]:rows[1], cols[0]:cols[1]] = \
        probabilities[:, :rows[1] - rows[0], :cols[1] - cols[0]]
    return volume


def _mean(values: list[float | None]) -> float | None:
    """Mean of the defined values (HD95 is undefined for empty masks), None when there are none."""
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


def evaluate_on_cases(model: torch.nn.Module, config: TrainConfig, cases: list[PreparedCase], ov_height: int | None,
                      device: torch.device) -> dict:
    """Mean Dice/IoU/precision/recall/HD95 over test cases and lesion FP/FN by volume bin (seed 000 Tables 4-5)."""
    if not cases:
        return {}
    per_case, bins = [], None
    for case in cases:
        dataset = make_slice_dataset(config, [case], training=False, ov_height=ov_height)
        predicted = predict_case(model, dataset, case, device) > config.threshold
        truth = case.lesions if config.task == "lesion" else case.breast
        pred_image = case.grid.image(predicted.astype(np.uint8))
        ref_image = case.grid.image((truth > 0).astype(np.uint8))
        scores = segmentation_metrics(pred_image, ref_image)
        per_case.append({"case_id": case.case_id, **{k: scores[k] for k in ("dice", "iou", "precision", "recall",
                                                                             "hd95")}})
        if config.task == "lesion":
            matching = match_lesions(pred_image, ref_image)
            bins = matching["bins"] if bins is None else [
                {**b, **{k: b[k] + m[k] for k in ("tp", "fp", "fn")}} for b, m in zip(bins, matching["bins"])]
    summary = {key: _mean([row[key] for row in per_case]) for key in ("dice", "iou", "precision", "recall", "hd95")}
    return {**summary, "cases": per_case, **({"lesion_bins": bins} if bins is not None else {})}


def _card(config: TrainConfig, name: str, fold: Fold, outcome: FitResult, energy: dict, test: dict,
          ov_height: int | None) -> ModelCard:
    preprocessing = config.preprocess.to_dict()
    if Approach(config.approach) is Approach.OV:
        preprocessing["crop"] = {"kind": "ov", "safe_distance_mm": config.safe_distance_mm, "multiple": 32,
                                 "training_height": ov_height}
    return ModelCard(
        name=name,
        task=config.task,
        architecture=config.architecture,
        architecture_kwargs=dict(config.architecture_options),
        inputs=list(config.inputs),
        preprocessing=preprocessing,
        threshold=config.threshold,
        training={
            "dataset": config.dataset,
            "approach": config.approach,
            "fold": fold.index,
            "train_patients": list(fold.train_patients),
            "val_patients": list(fold.val_patients),
            "epochs_run": len(outcome.history),
            "best_epoch": outcome.best_epoch,
            "seconds": round(outcome.seconds, 1),
            "energy": energy,
            "command": shlex.join(sys.argv),
            "config": config.to_dict(),
        },
        metrics={"validation_loss": outcome.best_val_loss,
                 "validation_dice": outcome.history[outcome.best_epoch - 1]["val_dice"] if outcome.history else None,
                 "test": test},
        notes=config.notes,
    )


def initial_weights(config: TrainConfig) -> dict[str, torch.Tensor] | None:
    """The weights of ``config.initial_model`` (checked against its card's SHA-256), None without one.

    Read before the hours of data preparation, so that a wrong card fails at once; the card must describe the same
    task and network as the configuration, and inputs that are the configuration's or some of them (the network is
    then widened by :func:`widen_inputs`), or its weights would not mean what the new training assumes. An ensemble
    card starts training from its network ``config.initial_member`` (default the first).
    """
    if config.initial_model is None:
        return None
    networks, card = load_networks(config.initial_model)
    if config.initial_member >= len(networks):
        raise InputError(f"initial_member {config.initial_member} names no network of initial_model, which has "
                         f"{len(networks)}", config.initial_model)
    if len(networks) > 1:
        log.info("initial_model is an ensemble of %d networks: training starts from network %d, %s",
                 len(networks), config.initial_member, card.members[config.initial_member][0])
    mismatched = [key for key, ours, theirs in (
        ("task", config.task, card.task), ("architecture", config.architecture, card.architecture),
        ("architecture_options", dict(config.architecture_options), dict(card.architecture_kwargs))) if ours != theirs]
    if list(card.inputs) != list(config.inputs) and not set(card.inputs) < set(config.inputs):
        mismatched.append("inputs")
    if mismatched:
        raise InputError(f"initial_model differs from the configuration in {', '.join(mismatched)}: its weights "
                         "cannot start this network", config.initial_model)
    state = networks[config.initial_member].state_dict()
    if list(card.inputs) == list(config.inputs):
        return state
    log.info("initial_model reads %s: the inputs %s start with zero weights", ", ".join(card.inputs),
             ", ".join(name for name in config.inputs if name not in card.inputs))
    target = build_model(config.architecture, in_channels=len(config.inputs), **config.architecture_options)
    return widen_inputs(state, list(card.inputs), list(config.inputs), target.state_dict())


def run_training(config: TrainConfig, progress: Progress | None = None) -> dict:
    """Train and test every configured fold; write models, logs and the results tables. Returns the results."""
    progress = progress or silent()
    start = initial_weights(config)
    device = resolve_device(config.device)
    context = init_distributed(device)
    device = context.device(device)
    output = Path(config.output_dir) / config.name
    try:
        masks = ("breast", "lesions") if config.task == "lesion" else ("breast",)
        records = load_dataset(config.dataset, require=masks if Approach(config.approach).uses_brs
                               else (TASK_MASKS[config.task],))
        cases = prepare_checked(records, config.task, config.preprocess, masks, config.folds + config.test_patients,
                                progress, view=lambda case: training_view(config, case))
        split = split_patients([r.patient_id for r in records], config.folds, config.test_patients,
                               config.optimisation.seed)
        if context.is_main:
            output.mkdir(parents=True, exist_ok=True)
            write_json(config.to_dict(), output / "config.json")
            write_json(split.to_dict(), output / "split.json")
        test_cases = [c for c in cases if c.patient_id in split.test_patients]
        outcomes = [train_fold(config, split.folds[k], cases, test_cases, output, device, context, progress, start)
                    for k in config.fold_numbers]
        return _summarise(config, outcomes, output) if context.is_main else {}
    finally:
        shutdown_distributed(context)


def train_fold(config: TrainConfig, fold: Fold, cases: list[PreparedCase], test_cases: list[PreparedCase],
               output: Path, device: torch.device, context, progress: Progress,
               start: dict[str, torch.Tensor] | None = None) -> FoldOutcome:
    """Train one fold from ``start`` (weights) or a random initialisation; test it and save its model card."""
    fold_dir = output / f"fold_{fold.index}"
    train = make_slice_dataset(config, [c for c in cases if c.patient_id in fold.train_patients], training=True)
    val = make_slice_dataset(config, [c for c in cases if c.patient_id in fold.val_patients], training=False,
                             ov_height=train.ov_height)
    if len(train) == 0 or len(val) == 0:
        raise InputError(f"fold {fold.index} has no training or validation slices for approach {config.approach}")
    torch.manual_seed(config.optimisation.seed)
    model = build_model(config.architecture, in_channels=len(config.inputs), **config.architecture_options)
    if start is not None:
        model.load_state_dict(start)
    loss = build_loss(config.loss, **config.loss_weights)
    with EnergyMeter(config.carbon) as meter:
        result = fit(model, loss, train, val, config.optimisation, fold_dir, device, context, progress)
    report = meter.report
    energy = {"method": report.method, "seconds": round(report.seconds, 1), "energy_kwh": report.energy_kwh,
              "co2_kg": report.co2_kg}
    model.load_state_dict(result.best_state)
    test = evaluate_on_cases(model, config, test_cases, train.ov_height, device)
    card_path = fold_dir / "model" / f"{config.name}_fold{fold.index}.json"
    if context.is_main:
        card = _card(config, f"{config.name}_fold{fold.index}", fold, result, energy, test, train.ov_height)
        card_path = save_model(model.cpu(), card, fold_dir / "model")
        plot_loss_curves(result.history, fold_dir / "loss.png", f"{config.name}, fold {fold.index}")
    return FoldOutcome(fold.index, result, energy, test, card_path)


def _summarise(config: TrainConfig, outcomes: list[FoldOutcome], output: Path) -> dict:
    """results.json / results.md, and the best fold's model as the run's model."""
    rows = [{
        "fold": o.fold, "epochs": len(o.result.history), "best_epoch": o.result.best_epoch,
        "val_loss": round(o.result.best_val_loss, 4), "train_minutes": round(o.result.seconds / 60, 2),
        "energy_kwh": round(o.energy["energy_kwh"], 4), "co2_kg": round(o.energy["co2_kg"], 4),
        **{f"test_{k}": (None if o.test.get(k) is None else round(o.test[k], 4))
           for k in ("dice", "iou", "precision", "recall", "hd95")},
    } for o in outcomes]
    best = min(outcomes, key=lambda o: o.result.best_val_loss)
    model, card = load_model(best.card_path)
    final_card = dataclasses.replace(card, name=config.name, weights="", sha256="",
                                     metrics={**card.metrics, "cross_validation": rows})
    final_path = save_model(model, final_card, output / "model")
    results = {"name": config.name, "folds": rows, "best_fold": best.fold, "model": str(final_path)}
    write_json(results, output / "results.json")
    (output / "results.md").write_text(f"# {config.name}\n\n{markdown_table(rows)}\n", encoding="utf-8")
    return results
