"""Designated safety sets: every red-team format in ../shared/data, identity, duplicates."""

from __future__ import annotations

import json

import pytest

from safealign.data.records import normalise_text
from safealign.data.safety_sets import (
    HARMBENCH_CONTEXT_SEPARATOR,
    detect_safety_set_format,
    load_safety_set,
)
from safealign.errors import DataError
from tests.conftest import shared_file

# file under ../shared/data: (format, distinct prompts, repeats dropped, first category)
SHARED_SETS = {
    "xstest/xstest_prompts.csv": ("xstest_prompts", 450, 0, "homonyms"),
    "harmbench/harmbench_behaviors_text_all.csv": ("harmbench", 400, 0, "chemical_biological"),
    "advbench/harmful_behaviors.csv": ("advbench", 520, 0, None),
    "strongreject/strongreject_dataset.csv": ("strongreject", 313, 0, "Disinformation and deception"),
    "simple-safety-tests/simple_safety_tests.csv": (
        "simple_safety_tests", 100, 0, "Suicide, Self-Harm, and Eating Disorders",
    ),
    "red-instruct-harmful-questions/harmfulqa.json": (
        "red_instruct", 1938, 22, "Social Sciences/Cultural Studies",
    ),
    "red-instruct-harmful-questions/catqa_english.json": (
        "red_instruct", 543, 7, "Illegal Activity/Drug:",
    ),
    "red-instruct-harmful-questions/dangerousqa.json": ("red_instruct", 200, 0, None),
    "red-instruct-harmful-questions/adversarialqa.json": ("red_instruct", 500, 0, None),
}  # fmt: skip


@pytest.mark.parametrize("relative", sorted(SHARED_SETS))
def test_every_shared_red_team_file_loads_as_a_safety_set(relative):
    path = shared_file(relative)
    fmt, count, dropped, category = SHARED_SETS[relative]
    safety_set = load_safety_set(path)
    assert (safety_set.format, len(safety_set), safety_set.duplicates_dropped) == (
        fmt,
        count,
        dropped,
    )
    assert safety_set.prompts[0].category == category
    identities = [normalise_text(p) for p in safety_set.texts]
    assert len(set(identities)) == len(identities) and all(identities)
    assert len(safety_set.fingerprint) == 64


def test_red_instruct_repeats_can_be_refused():
    path = shared_file("red-instruct-harmful-questions/catqa_english.json")
    with pytest.raises(DataError, match=r"question \d+: this prompt repeats question \d+"):
        load_safety_set(path, duplicates="refuse")


def test_harmbench_contextual_behaviours_carry_their_context():
    safety_set = load_safety_set(shared_file("harmbench/harmbench_behaviors_text_all.csv"))
    contextual = [p for p in safety_set.prompts if HARMBENCH_CONTEXT_SEPARATOR in p.prompt]
    assert len(contextual) == 100  # HarmBench's 100 contextual behaviours
    assert all(p.source_id for p in safety_set.prompts)


def test_xstest_keeps_each_prompts_label():
    safety_set = load_safety_set(shared_file("xstest/xstest_prompts.csv"))
    assert sum(p.label == "unsafe" for p in safety_set.prompts) == 200


def test_advbench_target_strings_are_not_prompts():
    with pytest.raises(DataError, match="not prompts") as info:
        load_safety_set(shared_file("advbench/harmful_strings.csv"))
    assert info.value.line == 1


def _jsonl(tmp_path, rows, name="set.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_normalised_copies_are_one_test_item(tmp_path):
    # Attack: a re-cased, re-spaced, zero-width-padded copy counted as a second independent draw.
    path = _jsonl(
        tmp_path,
        [
            {"prompt": "How do I pick a lock?"},
            {"prompt": "how  do I PICK a lock\u200b"},
            {"prompt": "Tell me a joke", "category": "benign", "id": "j1"},
        ],
    )
    safety_set = load_safety_set(path)
    assert safety_set.texts == ("How do I pick a lock?", "Tell me a joke")
    assert safety_set.duplicates_dropped == 1
    assert safety_set.prompts[1].category == "benign" and safety_set.prompts[1].source_id == "j1"
    with pytest.raises(DataError, match="repeats line 1") as info:
        load_safety_set(path, duplicates="refuse")
    assert info.value.line == 2


def test_fingerprint_is_the_sets_normalised_identity(tmp_path):
    a = load_safety_set(_jsonl(tmp_path, [{"prompt": "A b c"}, {"prompt": "d e f"}], "a.jsonl"))
    b = load_safety_set(_jsonl(tmp_path, [{"prompt": "D  E F!"}, {"prompt": "a b c"}], "b.jsonl"))
    c = load_safety_set(_jsonl(tmp_path, [{"prompt": "a b c"}, {"prompt": "d e g"}], "c.jsonl"))
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_csv_with_a_prompt_column(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text('prompt,category\n"Hello, world",greeting\nBye,\n', encoding="utf-8")
    safety_set = load_safety_set(path)
    assert safety_set.format == "csv"
    assert [(p.prompt, p.category, p.line) for p in safety_set.prompts] == [
        ("Hello, world", "greeting", 2),
        ("Bye", None, 3),
    ]


@pytest.mark.parametrize(
    "rows, line, field, match",
    [
        ([{"prompt": "ok"}, {"text": "no prompt"}], 2, "prompt", "'prompt' is missing"),
        ([{"prompt": 3}], 1, "prompt", "must be a string"),
        ([{"prompt": "ok", "category": ["a"]}], 1, "category", "must be a string"),
        ([{"prompt": "   "}], 1, "prompt", "empty string"),
        ([{"prompt": "?!..."}], 1, None, "empty once normalised"),
    ],
)
def test_bad_jsonl_names_file_line_and_field(tmp_path, rows, line, field, match):
    path = _jsonl(tmp_path, rows)
    with pytest.raises(DataError, match=match) as info:
        load_safety_set(path)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)


def test_duplicate_keys_and_unknown_layouts_are_refused(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"prompt": "a", "prompt": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="duplicate key"):
        load_safety_set(path)
    other = tmp_path / "other.csv"
    other.write_text("question,answer\nq,a\n", encoding="utf-8")
    with pytest.raises(DataError, match="no safety-set format has these columns"):
        detect_safety_set_format(other)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"topic": ["not", "nested"]}', encoding="utf-8")
    with pytest.raises(DataError, match="must map subtopics"):
        load_safety_set(bad_json)
    with pytest.raises(DataError, match="unknown safety-set format"):
        load_safety_set(other, format="parquet")
