"""The one record of a failed verification check, shared by the manifest and the report checks."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Problem"]


@dataclass(frozen=True)
class Problem:
    """One failed check of a report.

    Attributes:
        check: The check's name, e.g. ``"safety-verdict"`` (the names are listed in
            ``safealign.audits.checks`` and ``safealign.audits.signing``).
        message: What is wrong, with the values.
        bad_input: True when the report cannot be processed at all (unreadable, not JSON, a
            manifest path no file system can hold): ``audit verify`` then exits 2, not 1.
    """

    check: str
    message: str
    bad_input: bool = False

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"
