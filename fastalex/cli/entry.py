"""The entry point of the ``fastalex`` command: the parser of every command group, and
:func:`main`, which runs one and turns every error into one line on stderr and an exit code."""

from __future__ import annotations

import os
import sys

from ..errors import WeightsFileError
from . import insight, model, run, speed
from .common import PROG, Parser, UsageError, err, printable

__all__ = ["build_parser", "main"]


def build_parser():
    parser = Parser(prog=PROG, description="AlexNet inference on the CPU (NumPy reference and Numba fast path).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    run.add_commands(sub)  # classify, embed
    model.add_commands(sub)  # summary, weights download|path
    speed.add_commands(sub)  # bench, tune
    insight.add_commands(sub)  # show filters|activations, explain, profile
    from ..serve.command import add_command as add_serve
    add_serve(sub)  # serve: the HTTP API and the page (fastalex[serve])
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    for stream in (sys.stdout, sys.stderr):  # print any file name, even one that is not UTF-8
        try:
            stream.reconfigure(errors="surrogateescape" if stream is sys.stdout else "backslashreplace")
        except (AttributeError, ValueError):  # not a TextIOWrapper (e.g. captured by a test)
            pass
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if args.command != "weights":  # a bad FASTALEX_BACKEND is a usage error, reported first
            from ..backends import get_backend_name
            try:
                get_backend_name()
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        from ..backends import configure_threads
        configure_threads()  # Numba's TBB layer (else workqueue), unless NUMBA_THREADING_LAYER says otherwise
        status = args.func(args)
        sys.stdout.flush()
        return status
    except (UsageError, WeightsFileError) as exc:
        err(f"error: {printable(str(exc))}")
        return 2
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`fastalex classify ... | head`): stop quietly, and point stdout
        # at /dev/null so the interpreter's final flush does not complain either.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except MemoryError:
        err("error: out of memory (a smaller --batch-size needs less)")
        return 1
    except Exception as exc:  # never a traceback
        message = str(exc) or type(exc).__name__
        err(f"error: {message}" if isinstance(exc, (ValueError, OSError)) else
             f"error: {type(exc).__name__}: {message}")
        return 1
