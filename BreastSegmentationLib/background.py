"""Running ``breastseg segment`` in a background process from a host application such as 3D Slicer.

The host builds the command line here, starts it as a :class:`BackgroundProcess` (its own process group, so
that cancelling ends the launcher and the Python it starts), reads progress and log lines without blocking, and
turns a failure into a message a user can act on. It also checks which Python packages the command still needs.
"""

from __future__ import annotations

import enum
import importlib.metadata
import importlib.util
import json
import logging
import os
import queue
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

log = logging.getLogger(__name__)

#: The module that ``python -m`` runs: the ``breastseg`` command without an installed entry point.
CLI_MODULE = "BreastSegmentationLib.cli"

#: The values of ``segment --device``, in the order a device menu lists them.
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")

#: Exit codes of ``breastseg`` (see :mod:`BreastSegmentationLib.cli`).
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130

#: torch is installed by Slicer's PyTorch extension, which picks the build matching the GPU driver.
TORCH_VERSION_SPECIFIER = ">=2.2"
TORCH_REQUIREMENT = f"torch{TORCH_VERSION_SPECIFIER}"
#: What the command needs besides torch and Slicer's own packages; pip installs what is missing.
PIP_REQUIREMENTS: tuple[str, ...] = (
    "monai>=1.3", "safetensors>=0.4", "tqdm>=4.60", "matplotlib>=3.7", "scipy>=1.10", "pydicom>=3.0",
)
#: Packages Slicer builds itself: pinned while pip installs, so that pip fails rather than replace them.
HOST_OWN_PACKAGES: tuple[str, ...] = ("numpy", "SimpleITK", "vtk")


@dataclass(frozen=True)
class SegmentRequest:
    """The arguments of one ``breastseg segment`` run: pre + post files, or a DICOM study folder."""

    out_dir: Path
    pre: Path | None = None
    post: Path | None = None
    dicom: Path | None = None
    reference: Path | None = None
    device: str = "auto"
    models: Path | None = None
    threshold: float | None = None
    mixed_precision: bool = False


def segment_arguments(request: SegmentRequest) -> list[str]:
    """The ``breastseg`` arguments (after the program name) for ``request``, reporting progress as JSON lines."""
    if request.dicom is not None:
        if request.pre is not None or request.post is not None:
            raise ValueError("give either a DICOM study folder or pre- and post-contrast files, not both")
        inputs = ["--dicom", os.fspath(request.dicom)]
    elif request.pre is not None and request.post is not None:
        inputs = ["--pre", os.fspath(request.pre), "--post", os.fspath(request.post)]
    else:
        raise ValueError("a segment request needs a DICOM study folder or both pre- and post-contrast files")
    arguments = ["--progress", "jsonl", "segment", *inputs, "--out", os.fspath(request.out_dir),
                 "--device", request.device]
    if request.reference is not None:
        arguments += ["--reference", os.fspath(request.reference)]
    if request.models is not None:
        arguments += ["--models", os.fspath(request.models)]
    if request.threshold is not None:
        arguments += ["--threshold", f"{request.threshold:g}"]
    if request.mixed_precision:
        arguments.append("--mixed-precision")
    return arguments


def python_command(python_executable: str | os.PathLike, arguments: Sequence[str]) -> list[str]:
    """``python -m BreastSegmentationLib.cli ARGUMENTS``: run it with :func:`library_parent_dir` as working folder."""
    return [os.fspath(python_executable), "-m", CLI_MODULE, *arguments]


def library_parent_dir() -> Path:
    """The folder holding ``BreastSegmentationLib``: as working folder, ``python -m`` finds the library there."""
    return Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ProgressEvent:
    """One ``{"stage": ..., "done": ...}`` line of ``--progress jsonl``."""

    stage: str
    done: float


def parse_progress_line(line: str) -> ProgressEvent | None:
    """The progress event on ``line``, or None for any other output (log messages, tracebacks)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("stage"), str):
        return None
    done = payload.get("done")
    if not isinstance(done, (int, float)) or isinstance(done, bool):
        return None
    return ProgressEvent(payload["stage"], min(max(float(done), 0.0), 1.0))


def stage_title(stage: str) -> str:
    """A readable progress-bar label for a stage name such as ``brs`` or ``lesion_model``."""
    known = {"brs": "Breast region", "bls": "Lesions"}
    return known.get(stage.lower(), stage.replace("_", " ").capitalize())


class FailureKind(enum.Enum):
    BAD_INPUT = "bad input"
    GPU_OUT_OF_MEMORY = "GPU out of memory"
    GPU_UNAVAILABLE = "GPU not available"
    KILLED = "process killed"
    CANCELLED = "cancelled"
    INTERNAL = "internal error"


@dataclass(frozen=True)
class Failure:
    """Why a run failed, with a message for the user."""

    kind: FailureKind
    message: str

    @property
    def cpu_may_help(self) -> bool:
        """Running again on the CPU avoids this failure."""
        return self.kind in (FailureKind.GPU_OUT_OF_MEMORY, FailureKind.GPU_UNAVAILABLE)


_ERROR_LINE = re.compile(r"^breastseg \S+: error: (.*)$")
_GPU_OUT_OF_MEMORY = re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED", re.IGNORECASE)
_GPU_UNAVAILABLE = re.compile(
    r"no CUDA GPU|CUDA is not available|not compiled with CUDA|no CUDA-capable device|CUDA driver version is "
    r"insufficient|found no NVIDIA driver", re.IGNORECASE)


def _last_lines(lines: Sequence[str], count: int = 15) -> str:
    text_lines = [line.rstrip() for line in lines if line.strip() and parse_progress_line(line) is None]
    return "\n".join(text_lines[-count:])


def describe_failure(returncode: int, output_lines: Sequence[str], cancelled: bool = False) -> Failure | None:
    """None for success, else what went wrong, read from the exit code and the command's output."""
    if returncode == 0:
        return None
    if cancelled or returncode == EXIT_CANCELLED:
        return Failure(FailureKind.CANCELLED, "The segmentation was cancelled.")
    output = "\n".join(output_lines)
    if _GPU_OUT_OF_MEMORY.search(output):
        return Failure(FailureKind.GPU_OUT_OF_MEMORY,
                       "The GPU ran out of memory. Close other programs that use the GPU, or run on the CPU.")
    if _GPU_UNAVAILABLE.search(output):
        return Failure(FailureKind.GPU_UNAVAILABLE,
                       "No usable CUDA GPU was found (driver or PyTorch build without CUDA). Run on the CPU instead.")
    if returncode == EXIT_BAD_INPUT:
        errors = [match.group(1) for line in output_lines if (match := _ERROR_LINE.match(line.strip()))]
        return Failure(FailureKind.BAD_INPUT, errors[-1] if errors else _last_lines(output_lines))
    if returncode < 0:
        return Failure(FailureKind.KILLED,
                       f"The segmentation process was ended by signal {-returncode}; most often the computer ran out "
                       "of memory. Close other programs or use a GPU.")
    return Failure(FailureKind.INTERNAL,
                   f"The segmentation failed (exit code {returncode}):\n{_last_lines(output_lines)}")


class BackgroundProcess:
    """A command in its own process group whose merged stdout/stderr lines are collected by a reader thread.

    Reading never blocks the caller (a GUI polls :meth:`read_lines` from a timer). :meth:`terminate` asks the
    whole group to stop (SIGINT on POSIX, so Python cleans up and the CLI exits with 130); :meth:`kill` ends it
    at once. A launcher such as PythonSlicer starts the real interpreter as a child: the group reaches both.
    """

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None):
        environment = dict(os.environ if env is None else env)
        environment.update({"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"})
        platform_options: dict = (
            {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
            if os.name == "nt" else {"start_new_session": True}
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._process = subprocess.Popen(
            list(args), env=environment, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", **platform_options,
        )
        self._reader = threading.Thread(target=self._read_output, name="breastseg-output", daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\r\n"))
        self._process.stdout.close()
        self._process.wait()

    @property
    def pid(self) -> int:
        return self._process.pid

    def read_lines(self, timeout: float = 0.0) -> list[str]:
        """The lines printed since the last call; waits up to ``timeout`` seconds for the first one."""
        lines = []
        try:
            lines.append(self._lines.get(timeout=timeout) if timeout > 0 else self._lines.get_nowait())
            while True:
                lines.append(self._lines.get_nowait())
        except queue.Empty:
            return lines

    def finished(self) -> bool:
        """The process ended and all its output was read (what is left is returned by :meth:`read_lines`)."""
        return not self._reader.is_alive()

    @property
    def returncode(self) -> int | None:
        """The exit code once :meth:`finished`; negative ``-N`` when ended by signal N (POSIX)."""
        return self._process.returncode if self.finished() else None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until :meth:`finished` (or ``timeout`` seconds); return the exit code, None if still running."""
        self._reader.join(timeout)
        return self.returncode

    def terminate(self) -> None:
        """Ask the process group to stop, letting Python clean up; on Windows this is :meth:`kill`."""
        if os.name == "nt":
            self.kill()
        elif self._process.poll() is None:
            self._signal_group(signal.SIGINT)

    def kill(self) -> None:
        """End the process and every process it started, at once."""
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)], capture_output=True, check=False)
        else:
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, signal_number: int) -> None:
        try:
            os.killpg(self._process.pid, signal_number)
        except ProcessLookupError:  # the whole group already ended
            pass


def run_to_completion(process: BackgroundProcess, on_line: Callable[[str], None]) -> int:
    """Pass every output line to ``on_line`` until the process has finished; return its exit code."""
    while not process.finished():
        for line in process.read_lines(timeout=0.2):
            on_line(line)
    for line in process.read_lines():
        on_line(line)
    return process.returncode


def cuda_device_names() -> list[str]:
    """Names of the CUDA GPUs that torch can use; empty when torch is not installed, cannot load, or finds no GPU.

    Only labels the device menu: a broken torch install is reported by the segmentation run itself.
    """
    if importlib.util.find_spec("torch") is None:
        return []
    try:
        import torch
    except (ImportError, OSError) as error:
        log.warning("PyTorch cannot be imported (%s); listing no GPU", error)
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def device_label(device: str, gpu_names: Sequence[str]) -> str:
    """The text shown for a ``--device`` choice, naming the GPU that would be used."""
    gpu = f"GPU: {gpu_names[0]}" if gpu_names else None
    if device == "auto":
        return f"Automatic ({gpu or 'CPU, no GPU found'})"
    if device == "cuda":
        return gpu or "GPU (none found)"
    return "CPU"


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, None if it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements: Iterable[str],
                         version_of: Callable[[str], str | None] = installed_version) -> list[str]:
    """The requirements (pip syntax) that are not installed or not in the required version range."""
    missing = []
    for text in requirements:
        requirement = Requirement(text)
        version = version_of(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(text)
    return missing


def pip_constraints(packages: Iterable[str] = HOST_OWN_PACKAGES,
                    version_of: Callable[[str], str | None] = installed_version) -> str:
    """A pip constraints file pinning the installed ``packages``, so that installing others never replaces them."""
    pins = [f"{name}=={version}" for name in packages if (version := version_of(name)) is not None]
    return "".join(f"{pin}\n" for pin in pins)

