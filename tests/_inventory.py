"""The release-inventory check every whole-run test makes of its run directory."""

from __future__ import annotations

import json
from pathlib import Path

from safealign.audits.inventory import NOT_RELEASED, released_file, unclassified_fields


def unclassified_run_files(out: Path) -> list[str]:
    """Each file under ``out`` the release inventory does not classify, and each field of a
    released JSON file it leaves unclassified (files it lists as never released are skipped)."""
    problems = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        relative = path.relative_to(out).as_posix()
        if any(Path(relative).match(p) or relative == p for p in NOT_RELEASED):
            continue
        released = released_file(relative)
        if released is None:
            problems.append(f"{relative}: no entry in the release inventory")
        elif released.json:
            unknown = unclassified_fields(json.loads(path.read_text()), released)
            problems += [f"{relative}: {field}" for field in unknown]
    return problems
