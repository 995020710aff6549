"""Training speed: our loop against the structure of the source code, side by side on one model, data and CPU.

(a) Source structure (seed 000's public code): for each batch of B whole volumes, read from disk (prepared NIfTI
    files, as the source reads them per batch), loop over the slice index z and train on the B slices at that z;
    tensors channels-first.
(b) Ours: ``fit`` over a ``SliceDataset`` of the prepared cases held in memory: shuffled batches, channels-last,
    one validation batch and the per-epoch checkpoint included.

Both run the same number of optimisation steps with the same batch size, model (same initial weights), loss
(seed 000's hybrid) and optimiser (RAdam), on phantom cases, in rounds that alternate (a) and (b) so that load from
other processes hits both alike. Also timed: one WV epoch and one OV epoch of ``fit`` on the same cases, and their
ratio (seed 000 saw 75 / 16 min per fold; a fold also differs in its number of epochs).

Prints the figures and writes them as JSON with ``--out``; asserts nothing about time.
Run: ``python benchmarks/train.py [--quick] [--out results.json]`` (the default run takes a few minutes).
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # huge pages for torch's CPU allocator; read when torch loads

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from BreastSegmentationLib.data.datasets import load_dataset  # noqa: E402
from BreastSegmentationLib.data.phantom import PhantomConfig, write_cases  # noqa: E402
from BreastSegmentationLib.data.preprocessing import PreparedCase, prepare_checked  # noqa: E402
from BreastSegmentationLib.data.slices import SliceDataset  # noqa: E402
from BreastSegmentationLib.io.outputs import atomic_output_file  # noqa: E402
from BreastSegmentationLib.models.registry import build_model  # noqa: E402
from BreastSegmentationLib.training.losses import build_loss  # noqa: E402
from BreastSegmentationLib.training.trainer import OptimisationSettings, fit  # noqa: E402

#: Seed 000 Table 6: training time per fold, WV without BRS / OV with BRS.
PAPER_WV_OV_RATIO = 75 / 16


@dataclass(frozen=True)
class Settings:
    """What the benchmark runs; ``quick`` is a smoke run of under a minute."""

    cases: int = 8
    shape: tuple[int, int, int] = (128, 128, 16)
    architecture: str = "unetpp"
    batch_size: int = 8
    steps: int = 4
    rounds: int = 3
    threads: int = 2
    seed: int = 0


QUICK = Settings(cases=8, shape=(64, 64, 8), architecture="unetpp_small", steps=4, rounds=2)


def make_cases(folder: Path, settings: Settings) -> list[PreparedCase]:
    """Phantom cases (every one with a lesion, so OV has slices), prepared as training prepares them."""
    write_cases(folder / "phantoms", settings.cases, settings.seed, PhantomConfig(lesion_count_range=(1, 3)),
                shape=settings.shape)
    return prepare_checked(load_dataset(folder / "phantoms"), "lesion", masks=("breast", "lesions"))


def write_prepared_volumes(cases: list[PreparedCase], folder: Path) -> list[dict[str, Path]]:
    """The prepared channels and lesion masks as NIfTI files: what the source code reads from disk per batch."""
    paths = []
    for case in cases:
        files = {}
        for name, array in (*zip(case.channels, case.image), ("label", case.lesions)):
            files[name] = folder / case.case_id / f"{name}.nii.gz"
            files[name].parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(case.grid.image(np.ascontiguousarray(array)), str(files[name]))
        paths.append(files)
    return paths


def fresh_model(settings: Settings) -> torch.nn.Module:
    torch.manual_seed(settings.seed)
    return build_model(settings.architecture, in_channels=2)


def source_structure(volumes: list[dict[str, Path]], settings: Settings) -> float:
    """Seconds for ``settings.steps`` optimisation steps trained as the source code does (see the module text)."""
    model = fresh_model(settings).train()
    optimiser = torch.optim.RAdam(model.parameters(), lr=1e-3, weight_decay=3e-5)
    loss_fn = build_loss("hybrid")
    steps, started = 0, time.perf_counter()
    while True:
        for start in range(0, len(volumes) - settings.batch_size + 1, settings.batch_size):
            batch = volumes[start:start + settings.batch_size]
            images = [np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(files[name]))) for name in ("pre", "post")])
                      for files in batch]
            labels = [sitk.GetArrayFromImage(sitk.ReadImage(str(files["label"]))) for files in batch]
            for z in range(images[0].shape[1]):
                inputs = torch.from_numpy(np.stack([image[:, z] for image in images]).astype(np.float32))
                target = torch.from_numpy(np.stack([label[z][None] for label in labels]).astype(np.float32))
                optimiser.zero_grad()
                loss_fn(model(inputs), target).backward()
                optimiser.step()
                steps += 1
                if steps == settings.steps:
                    return time.perf_counter() - started


def ours(dataset: SliceDataset, settings: Settings, epochs_dir: Path) -> float:
    """Seconds of one ``fit`` epoch of ``settings.steps`` shuffled batches (plus one validation batch)."""
    generator = np.random.default_rng(settings.seed)
    chosen = generator.choice(len(dataset), settings.steps * settings.batch_size, replace=False)
    train = Subset(dataset, chosen.tolist())
    val = Subset(dataset, chosen[:settings.batch_size].tolist())
    return timed_fit(train, val, settings, epochs_dir)


def timed_fit(train, val, settings: Settings, work_dir: Path) -> float:
    optimisation = OptimisationSettings(epochs=1, batch_size=settings.batch_size, seed=settings.seed)
    started = time.perf_counter()
    fit(fresh_model(settings), build_loss("hybrid"), train, val, optimisation, work_dir, torch.device("cpu"))
    return time.perf_counter() - started


def epoch_seconds(cases: list[PreparedCase], approach: str, settings: Settings, work_dir: Path) -> dict:
    """One full ``fit`` epoch of an approach (validation: one batch), with its slice and pixel counts."""
    dataset = SliceDataset(cases, approach=approach, task="lesion")
    val = Subset(dataset, list(range(min(settings.batch_size, len(dataset)))))
    seconds = timed_fit(dataset, val, settings, work_dir)
    return {"approach": approach, "slices": len(dataset), "input_hw": list(dataset.spatial_shape),
            "seconds": seconds, "pixels": len(dataset) * int(np.prod(dataset.spatial_shape))}


def run(settings: Settings) -> dict:
    torch.set_num_threads(settings.threads)
    if settings.cases < settings.batch_size:
        raise SystemExit(f"need at least {settings.batch_size} cases to form batches of whole volumes")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as temporary:
        folder = Path(temporary)
        cases = make_cases(folder, settings)
        volumes = write_prepared_volumes(cases, folder / "volumes")
        dataset = SliceDataset(cases, approach="wv", task="lesion")
        if settings.steps * settings.batch_size > len(dataset):
            raise SystemExit(f"{settings.steps} steps of {settings.batch_size} slices need more than the "
                             f"{len(dataset)} slices of the cases")
        warm_up = Settings(**{**asdict(settings), "steps": 1})
        source_structure(volumes, warm_up)
        ours(dataset, warm_up, folder / "warm-up")
        rates: dict[str, list[float]] = {"source_structure": [], "ours": []}
        slices = settings.steps * settings.batch_size
        for index in range(settings.rounds):
            rates["source_structure"].append(slices / source_structure(volumes, settings))
            rates["ours"].append(slices / ours(dataset, settings, folder / f"round-{index}"))
        wv = epoch_seconds(cases, "wv", settings, folder / "epoch-wv")
        ov = epoch_seconds(cases, "ov", settings, folder / "epoch-ov")
    source, mine = statistics.median(rates["source_structure"]), statistics.median(rates["ours"])
    paired = [ours_rate / source_rate for source_rate, ours_rate in zip(rates["source_structure"], rates["ours"])]
    return {
        "settings": asdict(settings),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "slices_per_second": {name: [round(rate, 3) for rate in values] for name, values in rates.items()},
        "source_structure_slices_per_s": round(source, 3),
        "ours_slices_per_s": round(mine, 3),
        "speedup": round(statistics.median(paired), 2),
        "speedup_per_round": [round(ratio, 2) for ratio in paired],
        "wv_epoch": wv,
        "ov_epoch": ov,
        "wv_ov_epoch_ratio": round(wv["seconds"] / ov["seconds"], 2),
        "paper_wv_ov_fold_ratio": round(PAPER_WV_OV_RATIO, 2),
    }


def report(results: dict) -> str:
    settings, rates = results["settings"], results["slices_per_second"]
    wv, ov = results["wv_epoch"], results["ov_epoch"]
    return "\n".join([
        f"{settings['architecture']}, {settings['cases']} phantom cases of {tuple(settings['shape'])} (x, y, z), "
        f"batch {settings['batch_size']}, {settings['steps']} steps x {settings['rounds']} rounds, "
        f"{results['threads']} threads, THP_MEM_ALLOC_ENABLE={results['THP_MEM_ALLOC_ENABLE']}, "
        f"torch {results['torch']}",
        f"source structure (volumes read per batch, slice index by slice index): "
        f"{results['source_structure_slices_per_s']:.2f} slices/s, rounds {rates['source_structure']}",
        f"ours (fit over in-memory slices, shuffled, channels-last):            "
        f"{results['ours_slices_per_s']:.2f} slices/s, rounds {rates['ours']}",
        f"speed-up (median of the rounds' ratios): {results['speedup']:.2f}x, rounds {results['speedup_per_round']}",
        f"WV epoch: {wv['slices']} slices of {wv['input_hw']} in {wv['seconds']:.1f} s; "
        f"OV epoch: {ov['slices']} slices of {ov['input_hw']} in {ov['seconds']:.1f} s; "
        f"WV / OV = {results['wv_ov_epoch_ratio']:.2f} (seed 000: 75 / 16 min per fold = "
        f"{results['paper_wv_ov_fold_ratio']:.2f})",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny volumes and model: a smoke run under a minute")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default 2)")
    parser.add_argument("--steps", type=int, help="optimisation steps per round and loop")
    parser.add_argument("--architecture", help="model (default unetpp; quick: unetpp_small)")
    args = parser.parse_args()
    settings = QUICK if args.quick else Settings()
    overrides = {"threads": args.threads, "steps": args.steps, "architecture": args.architecture}
    settings = Settings(**{**asdict(settings), **{k: v for k, v in overrides.items() if v is not None}})
    results = run(settings)
    print(report(results))
    if args.out is not None:
        with atomic_output_file(args.out) as temporary:
            temporary.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
