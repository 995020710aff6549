"""Speed and memory of `breastseg segment` on a 352 x 352 x 150 phantom study.

    python benchmarks/segment.py [--models DIR] [--threads 2] [--repeats 5] [--dtype int16|float32] [--no-foci]
                                 [--mixed-precision] [--out FILE]

Measured side by side in one run: the whole job (read -> segment -> lesion table -> outputs written) and the bare
forward passes of the networks it contains (same slices, same batch size; every member of an ensemble). Prints the
end-to-end time, the forward-pass time, their ratio (target <= 1.25), and the peak resident memory of this process
(target <= 4 GB). The input files hold 16-bit integers, as a scanner's do, unless ``--dtype float32`` asks for the
phantom's own floats. ``--mixed-precision`` runs the job as `breastseg segment --mixed-precision` does, and the bare
forward passes in the same precision. With CUDA present the same figures are printed for the GPU. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from BreastSegmentationLib.data.phantom import generate_case
from BreastSegmentationLib.inference.foci import classify
from BreastSegmentationLib.inference.pipeline import ModelSet, SegmentationOptions, load_models
from BreastSegmentationLib.inference.runtime import (
    configure_cpu_memory,
    configure_cpu_threads,
    mixed_precision_dtype,
    predict_slices,
)
from BreastSegmentationLib.inference.study import segment_study, study_from_files

SHAPE = (352, 352, 150)
#: The largest value MR scanners store in most series (12 bits).
TWELVE_BIT_MAX = 4095.0


def write_study(folder: Path, seed: int, dtype: str = "int16") -> tuple[Path, Path]:
    """The phantom study's pre- and first post-contrast volumes as compressed NIfTI files of ``dtype``.

    int16 is what scanners' files hold (DICOM, and dcm2niix's NIfTI): the phantom's GE- and Siemens-like studies are
    integers already, and its Philips-like ones (the default seed's) are floating point, scaled here so that the
    brightest voxel of the study is 4095, the 12-bit range, with one factor for both phases.
    """
    case = generate_case(seed, shape=SHAPE)
    phases = case.pre, case.posts[0]
    if dtype == "int16" and phases[0].GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        brightest = max(float(sitk.GetArrayViewFromImage(phase).max()) for phase in phases)
        phases = tuple(sitk.Round(phase * (TWELVE_BIT_MAX / brightest)) for phase in phases)
    paths = folder / "pre.nii.gz", folder / "post.nii.gz"
    for phase, path in zip(phases, paths):
        sitk.WriteImage(sitk.Cast(phase, sitk.sitkInt16 if dtype == "int16" else sitk.sitkFloat32), str(path))
    return paths


def bare_forward_seconds(models: ModelSet, network_inputs: dict[str, tuple[int, ...]],
                         mixed_precision: bool = False) -> float:
    """The networks alone (every member of an ensemble, and the foci classifier on as many cubes as the study had
    candidates) on inputs of exactly the shapes the pipeline gave them
    (drawn before the clock starts: drawing them takes about a second here), with the test-time mirroring their
    cards ask for, in the precision the job gave them (the classifier: float32)."""
    rng = np.random.default_rng(0)
    inputs = {task: rng.normal(size=shape).astype(np.float32) for task, shape in network_inputs.items()}
    precision = mixed_precision_dtype(models.device, mixed_precision)
    started = time.perf_counter()
    for task, model in (("breast", models.breast), ("lesion", models.lesion)):
        predict_slices(model.networks, inputs[task], range(inputs[task].shape[1]), models.device,
                       mirror=model.card.test_time_mirroring, precision=precision)
    if "foci" in inputs:
        classify(models.foci.networks, inputs["foci"], models.device, models.foci.card.test_time_mirroring)
    if models.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(models: ModelSet, paths: tuple[Path, Path], repeats: int, options: SegmentationOptions) -> dict:
    """Fastest of ``repeats`` whole jobs (files in, outputs written) and of the bare forward passes."""
    runs, forwards = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            summary = segment_study(study_from_files(*paths), out, models, options)
            runs.append(time.perf_counter() - started)
        shapes = {task: tuple(shape) for task, shape in summary["network_inputs"].items()}
        forwards.append(bare_forward_seconds(models, shapes, options.mixed_precision))
    end_to_end, forward = min(runs), min(forwards)
    return {"device": summary["device"], "network_precision": summary["network_precision"],
            "end_to_end_s": round(end_to_end, 2), "forward_s": round(forward, 2), "ratio": round(end_to_end / forward, 2),
            "stages_s": summary["seconds"],
            "network_inputs": summary["network_inputs"], "lesions": summary["lesion_count"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="model folder (default: the bundled models)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2, the target's setting)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs per figure; the fastest counts (default 5: this shared machine slows down in "
                             "bursts, which the fastest of fewer often catches in one figure and not the other)")
    parser.add_argument("--seed", type=int, default=9100)
    parser.add_argument("--dtype", choices=("int16", "float32"), default="int16",
                        help="voxel type of the input files: int16, as scanners store MR images (default), or "
                             "float32, whose noise compresses poorly and reads slower")
    parser.add_argument("--no-foci", dest="foci", action="store_false",
                        help="without the foci classifier's search (as `breastseg segment --no-foci`)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="the breast and lesion networks in bfloat16 (CPU with native bf16) or float16 (CUDA), "
                             "as `breastseg segment --mixed-precision`")
    parser.add_argument("--out", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    configure_cpu_memory()
    configure_cpu_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        paths = write_study(Path(folder), args.seed, args.dtype)
        options = SegmentationOptions(foci=args.foci, mixed_precision=args.mixed_precision)
        results["cpu"] = measure(load_models(args.models, "cpu"), paths, args.repeats, options)
        if torch.cuda.is_available():
            results["cuda"] = measure(load_models(args.models, "cuda"), paths, args.repeats, options)
    results["input_dtype"] = args.dtype
    results["peak_memory_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2)
    results["targets"] = {"end_to_end_s": 30.0, "ratio": 1.25, "peak_memory_gb": 4.0}
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
