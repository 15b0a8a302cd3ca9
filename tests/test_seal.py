"""The seal holds: ``align --candidates`` refuses every variant kind of a safety prompt and its
near-duplicates, before anything is trained (issue 13, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safealign.cli import main
from safealign.config import load_config
from safealign.data.near_duplicates import NearDuplicateIndex, jaccard, shingles
from safealign.data.source import load_source, make_splits

CONFIG = str(Path(__file__).resolve().parents[1] / "examples" / "synthetic.yaml")
TINY = ["data.synthetic.num_prompts=150", "data.synthetic.num_users=10",
        "data.synthetic.pairs_per_user=20", "policy.num_candidates=4"]  # fmt: skip

#: The eight kinds of trivially different copies of a safety prompt (issue 13, finding 4).
VARIANTS = {
    "upper case": lambda p: p.upper(),
    "title case": lambda p: p.title(),
    "spacing": lambda p: f"  {p.replace(' ', '   ')} ",
    "tabs and newlines": lambda p: p.replace(" ", "\t\n", 3),
    "zero-width": lambda p: "\u200b" + p.replace(" ", " \u200d", 2) + "\ufeff",
    "soft hyphen": lambda p: p.replace("o", "o\u00ad", 2),
    "full-width": lambda p: p.replace("a", "\uff41").replace("e", "\uff45"),
    "punctuation": lambda p: f"¿{p}?!...",
}


def _setup(tmp_path: Path):
    out = tmp_path / "run"
    overrides = [*TINY, f"budget.ledger={tmp_path / 'ledger.sqlite'}"]
    config = load_config(CONFIG, overrides)
    pairs, world = load_source(config)
    return out, overrides, make_splits(pairs, config), world


def _candidates(path: Path, prompts, world) -> Path:
    rows = [{"prompt": p, "responses": ["a reply", "another reply"]} for p in prompts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _far_from_safety(splits, count):
    """Candidate-split prompts that are not near-copies of any safety prompt."""
    index = NearDuplicateIndex(splits.safety.unseal(purpose="certify").prompts)  # tests may peek
    return [p for p in splits.candidate.prompts if index.match(p) is None][:count]


@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_align_refuses_every_variant_kind_of_a_safety_prompt(kind, tmp_path, capsys):
    out, overrides, splits, world = _setup(tmp_path)
    safety_prompt = splits.safety.unseal(purpose="certify").prompts[0]
    variant = VARIANTS[kind](safety_prompt)
    assert variant != safety_prompt
    path = _candidates(tmp_path / "c.jsonl", [*_far_from_safety(splits, 3), variant], world)
    assert main(["align", CONFIG, "--candidates", str(path), "--out", str(out), *overrides]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: this prompt is one of the sealed safety prompts or a near-copy" in err
    assert not (out / "cost").exists() and not (tmp_path / "ledger.sqlite").exists()


def test_align_refuses_a_near_duplicate_of_a_safety_prompt(tmp_path, capsys):
    out, overrides, splits, world = _setup(tmp_path)
    safety_prompt = splits.safety.unseal(purpose="certify").prompts[0]
    near = f"{safety_prompt} Please answer briefly"  # not a normalised copy: two words added
    assert jaccard(shingles(near), shingles(safety_prompt)) >= 0.8
    path = _candidates(tmp_path / "c.jsonl", [*_far_from_safety(splits, 3), near], world)
    assert main(["align", CONFIG, "--candidates", str(path), "--out", str(out), *overrides]) == 2
    assert f"{path}:4: this prompt is one of the sealed safety prompts or a near-copy" in (
        capsys.readouterr().err
    )


def test_near_duplicates_at_the_documented_threshold():
    base = "how can i get into a locked car without the key when nobody is around"
    index = NearDuplicateIndex([base, "tell me a joke"])
    assert index.match(base + " please") == (0, pytest.approx(13 / 14))  # one word added
    assert index.match("TELL me a joke!") == (1, 1.0)  # short prompts: normalised copies only
    assert index.match("tell me a story") is None
    reworded = base.replace("locked", "parked")  # a word replaced mid-prompt: a different item
    assert jaccard(shingles(reworded), shingles(base)) < 0.8 and index.match(reworded) is None


def test_near_duplicate_index_agrees_with_brute_force_on_templated_prompts():
    config = load_config(CONFIG, ["data.synthetic.num_prompts=900"])
    _, world = load_source(config)
    prompts = list(world.prompts)
    indexed, queries = prompts[:200], prompts[200:]
    sets = [shingles(p) for p in indexed]
    brute = tuple(
        i for i, q in enumerate(queries) if any(jaccard(shingles(q), s) >= 0.8 for s in sets)
    )
    assert NearDuplicateIndex(indexed).matches(queries) == brute and brute  # hits, all found


def test_only_the_run_layer_unseals_the_safety_split():
    """One function opens the seal (safealign.run.certification.unseal_safety_split): every other
    module that wants the safety records goes through it. Before the run layer, three places in
    the package called the unseal primitive (the pipeline, the reference sampler, the test)."""
    import ast

    import safealign

    package = Path(safealign.__file__).parent
    callers = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for node in ast.walk(function):
                called = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                if called and node.func.attr == "unseal":
                    callers.append(f"{path.relative_to(package)}:{function.name}")
    assert callers == ["run/certification.py:unseal_safety_split"]
