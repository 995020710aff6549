"""Segment every study of a folder with 3D Slicer, without a window.

    Slicer --no-splash --no-main-window --python-script batch.py -- --input-dir DIR --output-dir OUT

Writes, per study, the outputs of ``breastseg segment`` into ``OUT/<study>/`` plus ``<study>.seg.nrrd`` (a Slicer
segmentation with the "Breast" segment and one segment per lesion, standard terminology and colours), and
``OUT/batch_summary.csv`` / ``.json``. The segmentation itself is BreastSegmentationLib.batch, which also runs in
plain Python. Exit code: 0 all studies segmented, 1 some failed, 2 bad arguments or no study found.
"""

import argparse
import sys
from pathlib import Path


def importModule():
    """Import the BreastSegmentation module (it puts BreastSegmentationLib on the path), also from a checkout."""
    moduleFolder = Path(__file__).resolve().parents[1]
    if str(moduleFolder) not in sys.path:
        sys.path.insert(0, str(moduleFolder))
    import BreastSegmentation

    return BreastSegmentation


def parseArguments(argv, deviceChoices):
    parser = argparse.ArgumentParser(prog="batch.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-dir", required=True, type=Path,
                        help="a study folder, or a folder whose sub-folders are studies (pre/post files or DICOM)")
    parser.add_argument("--output-dir", required=True, type=Path, help="results are written to OUTPUT_DIR/<study>/")
    parser.add_argument("--reference-dir", type=Path,
                        help="reference lesion masks named after their studies (CASE.nii.gz): those studies are scored")
    parser.add_argument("--device", choices=deviceChoices, default="auto", help="where the networks run")
    parser.add_argument("--models", type=Path, help="folder of user-trained model cards (default: bundled models)")
    parser.add_argument("--threshold", type=float, help="lesion probability threshold (default: the model card's)")
    parser.add_argument("--install-dependencies", action="store_true",
                        help="install missing Python packages (PyTorch, MONAI, ...) without asking")
    # Slicer may pass on the "--" that separates its own options from the script's.
    return parser.parse_args([argument for argument in argv if argument != "--"])


def saveSlicerSegmentations(logic, results) -> None:
    """Add ``<study>.seg.nrrd`` beside the outputs of every study that was segmented."""
    import slicer
    from BreastSegmentationLib import scene

    for result in results:
        if result.status != "ok":
            continue
        outputFolder = Path(result.output_dir)
        segmentation = logic.createSegmentation(scene.read_segment_outputs(outputFolder), result.study)
        if not slicer.util.saveNode(segmentation, str(outputFolder / f"{result.study}.seg.nrrd")):
            raise RuntimeError(f"could not write {outputFolder / f'{result.study}.seg.nrrd'}")
        slicer.mrmlScene.Clear()


def main(argv) -> int:
    module = importModule()
    from BreastSegmentationLib.background import DEVICE_CHOICES

    arguments = parseArguments(argv, DEVICE_CHOICES)
    logic = module.BreastSegmentationLogic()
    missing = logic.missingPackages()
    if missing and not arguments.install_dependencies:
        print(f"batch.py: error: missing Python packages {', '.join(missing)}; run again with "
              "--install-dependencies or open the Breast Segmentation module once", file=sys.stderr)
        return 2
    logic.ensureDependencies(askConfirmation=False)
    # Imported once the packages are there (the console progress needs tqdm).
    from BreastSegmentationLib import batch
    from BreastSegmentationLib.cli.console import make_progress
    from BreastSegmentationLib.errors import InputError
    from BreastSegmentationLib.inference.pipeline import SegmentationOptions

    progress, closeProgress = make_progress("bar")
    options = batch.BatchOptions(device=arguments.device, models=arguments.models,
                                 segmentation=SegmentationOptions(threshold=arguments.threshold))
    try:
        results = batch.run_batch(arguments.input_dir, arguments.output_dir, options, progress,
                                  arguments.reference_dir)
    except InputError as error:
        print(f"batch.py: error: {error}", file=sys.stderr)
        return 2
    finally:
        closeProgress()
    saveSlicerSegmentations(logic, results)
    for result in results:
        print(f"{result.study}: {result.status}" + (f" ({result.message})" if result.message else ""))
    print(f"summary: {arguments.output_dir / batch.SUMMARY_CSV}")
    return 0 if all(result.status == "ok" for result in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
