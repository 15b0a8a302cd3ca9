"""Reading a model directory's versioned JSON description (``scalar_model.json``, ``features.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from safealign.errors import DataError


def read_format_json(path: Path, *, fmt: str, missing: str) -> dict:
    """The JSON object at ``path``, checked to declare ``"format": fmt``.

    Raises:
        DataError: the file is missing (``missing`` says what that means, naming the directory),
            is not valid JSON, or declares another format.
    """
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(missing, path=str(path.parent)) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path.name} is not valid JSON ({exc.msg})", path=str(path)) from None
    if meta.get("format") != fmt:
        raise DataError(
            f"unsupported format {meta.get('format')!r} in {path.name} (expected {fmt})",
            path=str(path),
        )
    return meta
