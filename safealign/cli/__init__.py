"""The ``safealign`` command line: argument parsing and dispatch only.

:func:`main` is the console entry point (``safealign.cli:main``). The parser lives in
:mod:`safealign.cli.parser`; the handlers, grouped by topic, in :mod:`~safealign.cli.data`,
:mod:`~safealign.cli.training`, :mod:`~safealign.cli.certify` and :mod:`~safealign.cli.audit`.
Handlers import the heavy modules (torch, the run layer) only when they run, so that
``safealign --help`` stays fast. The handlers call the public API (:mod:`safealign`, the
subpackages' ``__all__``). ``torchrun ... -m safealign.cli.distributed`` is the one command
outside the parser (:mod:`safealign.cli.distributed`).

Exit codes: 0 success; 1 a check that ran and failed; 2 bad input or usage, or a file the operating
system refused (a message on stderr, never a traceback for a user mistake); 3 ``audit verify``
checked integrity only (no ``--public-key``), see :mod:`safealign.cli.common`; 70 an internal error
(a bug: one line on stderr, the traceback with ``SAFEALIGN_DEBUG=1``); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from safealign.cli.common import EXIT_BAD_INPUT
from safealign.cli.parser import build_parser
from safealign.errors import SafeAlignError

__all__ = ["EXIT_INTERNAL_ERROR", "EXIT_INTERRUPTED", "build_parser", "main"]

#: An unexpected exception: a bug in safealign, not a mistake of the user's (BSD sysexits'
#: EX_SOFTWARE, kept clear of the small codes that commands give meanings to).
EXIT_INTERNAL_ERROR = 70
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
DEBUG_ENV = "SAFEALIGN_DEBUG"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``safealign`` console script; returns the exit code."""
    parser = build_parser()
    # key=value overrides may come after options (``CONFIG --out DIR k=v``), which argparse's
    # positional handling cannot express: collect them from the leftovers.
    args, extra = parser.parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        args.overrides = list(args.overrides) + overrides
    try:
        return args.handler(args)
    except SafeAlignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        # Stages write atomically and resume from what they finished, so stopping is safe.
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        # The operating system refused a file (missing, unreadable, unwritable, disk full): the
        # user's environment, not a bug. Readers and the pre-flight check name most of these
        # with more context; this is what is left.
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the last resort: one line instead of a traceback
        return _internal_error(exc)


def _internal_error(exc: Exception) -> int:
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(exc, file=sys.stderr)
    what = " ".join(str(exc).split())  # one line, whatever the exception's text
    if len(what) > 300:
        what = what[:297] + "..."
    print(
        f"internal error: {type(exc).__name__}: {what} (please report; set {DEBUG_ENV}=1 for "
        "the traceback)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL_ERROR
