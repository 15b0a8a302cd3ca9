"""``python -m safealign.cli.distributed`` as the tests run it under torchrun.

Two changes, both for tests only: the secret bytes (``safealign.privacy.secret``) are repeatable
and *differ between ranks*, ``sha256("rank-R-N")`` for the N-th draw on rank R, so a run matches
a single-process run with rank 0's bytes only if the ranks really share rank 0's sampler; and
after ``main`` returns, each rank prints how many of the process group's threads are still
alive: a group left alive is torn down during interpreter exit, which aborted ranks at random.
"""

import hashlib
import itertools
import os
import sys
from pathlib import Path

from safealign.cli.distributed import main
from safealign.privacy import secret

GROUP_THREADS = ("gloo", "pt_gloo")  # thread names of a live gloo process group


def rank_bytes(rank: int):
    """The N-th secret draw on ``rank`` (the single-process run in the test uses rank 0's)."""
    counter = itertools.count()
    return lambda: hashlib.sha256(f"rank-{rank}-{next(counter)}".encode()).digest()


def _group_threads() -> int:
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():  # not Linux: nothing to count
        return 0
    alive = 0
    for task in tasks.iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except FileNotFoundError:  # the thread ended between listing and reading: not alive
            continue
        alive += name.startswith(GROUP_THREADS)
    return alive


if __name__ == "__main__":
    rank = os.environ.get("RANK", "0")
    secret._secret_material = rank_bytes(int(rank))
    code = main(sys.argv[1:])
    print(f"rank {rank}: process-group threads after shutdown: {_group_threads()}", flush=True)
    sys.exit(code)
