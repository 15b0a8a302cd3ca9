"""Constants every ``safealign`` command shares: the exit codes and the default run directory.

Exit codes: 0 success; 1 a check that ran and failed; 2 bad input or usage (a message on stderr,
never a traceback for a user mistake); 3 ``audit verify`` without ``--public-key`` found the
report intact but could not say who signed it (integrity only: never to be read as success).
``run``, ``align`` and ``certify`` share one run directory, so that ``certify`` finds the
``policy.json`` that ``align`` wrote without being told where.
"""

from __future__ import annotations

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_NOT_AUTHENTICATED = 0, 1, 2, 3
RUN_DIR = "runs/run"  # default run directory of run, align and certify (they share it)
