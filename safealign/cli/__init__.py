"""The ``safealign`` command line: argument parsing and dispatch only.

:func:`main` is the console entry point (``safealign.cli:main``). The parser lives in
:mod:`safealign.cli.parser`; the handlers, grouped by topic, in :mod:`~safealign.cli.data`,
:mod:`~safealign.cli.training`, :mod:`~safealign.cli.certify` and :mod:`~safealign.cli.audit`.
Handlers import the heavy modules (torch, the pipeline) only when they run, so that
``safealign --help`` stays fast.

Exit codes: 0 success; 1 a check that ran and failed; 2 bad input or usage (a message on stderr,
never a traceback for a user mistake); 3 ``audit verify`` checked integrity only (no
``--public-key``), see :mod:`safealign.cli.common`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from safealign.cli.common import EXIT_BAD_INPUT
from safealign.cli.parser import build_parser
from safealign.errors import SafeAlignError

__all__ = ["build_parser", "main"]


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
        print("interrupted", file=sys.stderr)
        return 130
