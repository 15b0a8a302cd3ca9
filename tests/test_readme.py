"""The README's "From Python" example runs as written (on a tiny world, to stay fast)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

import safealign
from tests._tiny_run import TINY_WORLD

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- tested: tests/test_readme.py runs this block -->"


def readme_block(marker: str = MARKER) -> str:
    """The fenced ``python`` block right after ``marker`` in README.md."""
    text = (ROOT / "README.md").read_text()
    found = re.search(re.escape(marker) + r"\n```python\n(.*?)\n```", text, re.DOTALL)
    assert found, f"README.md has no ```python block after {marker!r}"
    return found.group(1)


@pytest.mark.integration
def test_the_from_python_example_runs(monkeypatch, tmp_path, capsys):
    # The block as written, with the tiny world's overrides appended to its config (about
    # 20 s instead of minutes) and its temporary directory inside the test's.
    load_config = safealign.load_config
    monkeypatch.setattr(
        safealign,
        "load_config",
        lambda path, overrides=(): load_config(path, [*overrides, *TINY_WORLD]),
    )
    monkeypatch.setattr(tempfile, "mkdtemp", lambda: str(tmp_path))
    monkeypatch.chdir(ROOT)
    exec(compile(readme_block(), "README.md (From Python)", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert re.search(r"^(certified|NSF): U = ", printed, re.MULTILINE), printed
    assert "cost model: epsilon = " in printed
    assert (tmp_path / "run" / "report.json").is_file()


def test_the_block_is_found():
    block = readme_block()
    assert "safealign.run.run(" in block and "safealign.verify_report(" in block
