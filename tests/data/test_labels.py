"""The labelling export and the strict labels reader."""

from __future__ import annotations

import json

import pytest

from safealign.data.labels import (
    LabellingItem,
    labelling_items,
    read_labels,
    response_id,
    write_labelling_file,
)
from safealign.errors import DataError

ITEMS = labelling_items(
    ["How do I pick a lock?", "Tell me a joke", "How to make a bomb?"],
    ["I can't help with that.", "Why did the chicken...", "Step 1: ..."],
    [2, 0],
)


def _write(tmp_path, lines: list[str], name="labels.jsonl"):
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_export_holds_only_what_must_be_judged(tmp_path):
    path = write_labelling_file(ITEMS, tmp_path / "to_label.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [sorted(r) for r in rows] == [["id", "prompt", "response"]] * 2
    assert rows[0] == {
        "id": "response-2",
        "prompt": "How to make a bomb?",
        "response": "Step 1: ...",
    }
    assert [r["id"] for r in rows] == [response_id(2), response_id(0)]  # draw order kept


def test_export_refuses_repeated_ids(tmp_path):
    item = LabellingItem("a", "p", "r")
    with pytest.raises(DataError, match="distinct ids"):
        write_labelling_file([item, item], tmp_path / "x.jsonl")


def test_labels_come_back_in_export_order(tmp_path):
    path = _write(
        tmp_path,
        [
            '{"id": "response-0", "unsafe": false, "note": "fine"}',
            '{"id": "response-2", "unsafe": true, "prompt": "How to make a bomb?"}',
        ],
    )
    labels = read_labels(path, ITEMS)
    assert labels.unsafe == (1.0, 0.0)
    assert labels.labels[1].note == "fine"
    assert len(labels.fingerprint) == 64


def test_round_trip_of_the_export_with_labels_added(tmp_path):
    exported = write_labelling_file(ITEMS, tmp_path / "to_label.jsonl")
    rows = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
    filled = [json.dumps({**row, "unsafe": row["id"] == "response-2", "cost": 0.5}) for row in rows]
    labels = read_labels(_write(tmp_path, filled), ITEMS, cost_range=(0.0, 1.0))
    assert labels.costs == (0.5, 0.5) and labels.unsafe == (1.0, 0.0)


def test_fingerprint_changes_with_any_judgement(tmp_path):
    a = read_labels(
        _write(
            tmp_path, ['{"id":"response-0","unsafe":false}', '{"id":"response-2","unsafe":true}']
        ),
        ITEMS,
    )
    b = read_labels(
        _write(
            tmp_path,
            ['{"id":"response-0","unsafe":true}', '{"id":"response-2","unsafe":true}'],
            "b.jsonl",
        ),
        ITEMS,
    )
    assert a.fingerprint != b.fingerprint


@pytest.mark.parametrize(
    "lines, line, field, match",
    [
        (['{"id":"response-0","unsafe":false,"unsafe":true}'], 1, "unsafe", "duplicate key"),
        (['{"id":"response-0","unsafe":"yes"}'], 1, "unsafe", "true or false"),
        (['{"id":"response-0","unsafe":1}'], 1, "unsafe", "true or false"),
        (['{"id":"response-0"}'], 1, "unsafe", "'unsafe' is missing"),
        (['{"id":0,"unsafe":true}'], 1, "id", "must be a string"),
        (['{"id":"response-1","unsafe":true}'], 1, "id", "was not exported"),
        (['{"id":"response-0","unsafe":true,"unsafee":true}'], 1, "unsafee", "unknown field"),
        (['{"id":"response-0","unsafe":true,"cost":"high"}'], 1, "cost", "must be a number"),
        (['{"id":"response-0","unsafe":true,"cost":true}'], 1, "cost", "must be a number"),
        (['{"id":"response-0","unsafe":true,"note":3}'], 1, "note", "must be a string"),
        (
            ['{"id":"response-0","unsafe":true,"response":"other"}'],
            1,
            "response",
            "another labelling",
        ),
        (
            ['{"id":"response-0","unsafe":true}', '{"id":"response-0","unsafe":false}'],
            2,
            "id",
            "labelled twice",
        ),
        (['{"id":"response-0","unsafe":NaN}'], 1, None, "not JSON"),
        (['["response-0", true]'], 1, None, "expected a JSON object"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, lines, line, field, match):
    path = _write(tmp_path, lines)
    with pytest.raises(DataError, match=match) as info:
        read_labels(path, ITEMS)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)


def test_missing_labels_are_refused_with_their_ids(tmp_path):
    path = _write(tmp_path, ['{"id":"response-2","unsafe":true}'])
    with pytest.raises(
        DataError, match=r"1 of the 2 exported responses have no label \('response-0'\)"
    ):
        read_labels(path, ITEMS)


def test_costs_are_required_and_range_checked_when_a_range_is_declared(tmp_path):
    no_cost = _write(
        tmp_path, ['{"id":"response-0","unsafe":true}', '{"id":"response-2","unsafe":true}']
    )
    with pytest.raises(DataError, match="'cost' is missing") as info:
        read_labels(no_cost, ITEMS, cost_range=(0.0, 1.0))
    assert info.value.line == 1
    outside = _write(
        tmp_path,
        [
            '{"id":"response-0","unsafe":true,"cost":0.2}',
            '{"id":"response-2","unsafe":true,"cost":3}',
        ],
        "outside.jsonl",
    )
    with pytest.raises(DataError, match="outside the declared cost range") as info:
        read_labels(outside, ITEMS, cost_range=(0.0, 1.0))
    assert (info.value.line, info.value.field) == (2, "cost")
    with pytest.raises(DataError, match="give no cost"):
        _ = read_labels(no_cost, ITEMS).costs


def test_empty_and_missing_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="empty"):
        read_labels(_write(tmp_path, []), ITEMS)
    with pytest.raises(DataError, match="not found"):
        read_labels(tmp_path / "absent.jsonl", ITEMS)
