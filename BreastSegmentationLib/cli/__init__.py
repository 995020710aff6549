"""The ``breastseg`` command: a thin face over the library.

Each subcommand lives in its own module of this package and exposes ``add_parser(subparsers)``, which
registers its arguments and sets ``handler`` to a function ``(args, progress) -> exit code``.
Exit codes: 0 ok, 2 bad input or usage (:class:`InputError`), 1 internal error, 130 cancelled.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from .. import __version__
from ..errors import InputError
from ..inference.runtime import configure_cpu_memory
from ..progress import Cancelled
from .console import make_progress

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = ("demo", "segment", "inspect", "evaluate", "phantom", "train", "ensemble", "models",
                                   "carbon", "experiment")

log = logging.getLogger("breastseg")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="breastseg",
        description="Breast region and lesion segmentation for breast DCE-MRI.",
        epilog="Run 'breastseg COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "--progress",
        choices=("bar", "jsonl", "none"),
        default="bar",
        help="progress on standard error: a bar (default), one JSON object per line (for other programs), or none",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def listen_for_interrupts() -> None:
    """Turn SIGINT into KeyboardInterrupt even where it was inherited as ignored: a host that cancels a run sends
    SIGINT (:mod:`..background`), and a process started in the background of a shell ignores it from birth, which
    would leave the run to be killed without cleaning up. Only the main thread may set handlers."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``breastseg`` with ``argv``; return the exit code."""
    configure_cpu_memory()
    listen_for_interrupts()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    progress, close_progress = make_progress(args.progress)
    try:
        return int(args.handler(args, progress) or 0)
    except InputError as error:
        print(f"breastseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"breastseg {args.command}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"breastseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: keep the traceback for the report
        log.exception("internal error in 'breastseg %s'", args.command)
        return 1
    finally:
        close_progress()


if __name__ == "__main__":
    sys.exit(main())
