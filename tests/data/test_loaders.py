import gzip
import json

import pytest

from safealign.data.loaders import detect_format, load_pairs, split_hh_dialogue
from safealign.data.validate import validate_file
from safealign.data.xstest import load_xstest_completions, load_xstest_prompts
from safealign.errors import DataError
from tests.conftest import shared_file


def _write_jsonl(path, rows, *, gz=False):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}


def test_generic_jsonl_with_optional_fields(tmp_path):
    rows = [
        GOOD,
        {
            **GOOD,
            "prompt": "q",
            "user_id": 7,
            "group": "g1",
            "chosen_safe": True,
            "rejected_safe": False,
            "safer": "chosen",
            "meta": "ignored",
        },
    ]
    pairs = load_pairs(_write_jsonl(tmp_path / "p.jsonl", rows))
    assert len(pairs) == 2
    assert pairs[1].user_id == "7" and pairs[1].group == "g1" and pairs[1].safer == "chosen"
    assert pairs.report.format == "jsonl"


def test_gzip_is_detected_by_magic_bytes(tmp_path):
    pairs = load_pairs(_write_jsonl(tmp_path / "p.data", [GOOD], gz=True))
    assert pairs[0].chosen == "a"


@pytest.mark.parametrize(
    ("line3", "field", "message"),
    [
        (
            {"prompt": "p", "rejected": "b"},
            "chosen",
            "field 'chosen' is missing (got keys: prompt, rejected)",
        ),
        (
            {"prompt": "p", "chosen": 5, "rejected": "b"},
            "chosen",
            "field 'chosen' must be a string (got int 5)",
        ),
        (
            {"prompt": " ", "chosen": "a", "rejected": "b"},
            "prompt",
            "field 'prompt' is an empty string",
        ),
        ({"prompt": "p", "chosen": "a", "rejected": "a"}, "rejected", "are identical"),
        ({**GOOD, "safer": "both"}, "safer", "field 'safer' must be one of"),
        ({**GOOD, "chosen_safe": "yes"}, "chosen_safe", "must be true or false"),
        ({**GOOD, "choosen_safe": True}, "choosen_safe", "did you mean 'chosen_safe'"),
    ],
)
def test_bad_record_names_file_line_field(tmp_path, line3, field, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "prompt": "q"}, line3])
    with pytest.raises(DataError) as info:
        load_pairs(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 3, field)
    assert str(err).startswith(f"{path}:3: ")
    assert message in str(err)


def test_not_json_and_not_object(tmp_path):
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_pairs(_write_jsonl(tmp_path / "bad.jsonl", [GOOD, "{oops"]))
    with pytest.raises(DataError, match=r":2: expected a JSON object, got list"):
        load_pairs(_write_jsonl(tmp_path / "list.jsonl", [GOOD, "[1, 2]"]), format="jsonl")


def test_empty_file_and_blank_lines(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        load_pairs(empty, format="jsonl")
    with pytest.raises(DataError, match="not found"):
        load_pairs(tmp_path / "nope.jsonl", format="jsonl")


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(
        json.dumps(GOOD).encode()
        + b"\n"
        + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
    )
    with pytest.raises(DataError, match=r"latin.jsonl:2: not valid UTF-8 \(byte 0xe9"):
        load_pairs(path, format="jsonl")


def test_truncated_gzip(tmp_path):
    path = _write_jsonl(
        tmp_path / "t.jsonl.gz",
        [GOOD] + [{**GOOD, "prompt": f"p{i}"} for i in range(2000)],
        gz=True,
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="gzip stream is corrupt or truncated"):
        load_pairs(path, format="jsonl")


def test_hh_rlhf_split_and_context_mismatch(tmp_path):
    ctx = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me"
    rows = [
        {"chosen": ctx + "\n\nAssistant: sure", "rejected": ctx + "\n\nAssistant: no"},
        {"chosen": ctx + "\n\nAssistant: sure", "rejected": "\n\nHuman: other\n\nAssistant: no"},
    ]
    pairs = load_pairs(_write_jsonl(tmp_path / "hh.jsonl", rows))
    assert pairs.report.format == "hh_rlhf"
    assert (
        len(pairs) == 1 and pairs.report.context_mismatches == 1 and pairs.report.num_records == 2
    )
    assert pairs[0].prompt == ctx + "\n\nAssistant:" and pairs[0].chosen == "sure"
    assert split_hh_dialogue("no assistant here") is None
    with pytest.raises(DataError, match=r":1: field 'chosen' has no"):
        load_pairs(
            _write_jsonl(tmp_path / "x.jsonl", [{"chosen": "x", "rejected": "y"}]), format="hh_rlhf"
        )


def test_hh_rlhf_chosen_is_safer_marks_every_pair_and_only_hh(tmp_path):
    ctx = "\n\nHuman: how do I pick a lock"
    rows = [
        {"chosen": ctx + "\n\nAssistant: I can't help", "rejected": ctx + "\n\nAssistant: Easy"}
    ]
    path = _write_jsonl(tmp_path / "hh.jsonl", rows)
    assert load_pairs(path)[0].safer is None  # helpful-* data: no safety order by default
    marked = load_pairs(path, chosen_is_safer=True)
    assert [p.safer for p in marked] == ["chosen"] and marked[0].chosen == "I can't help"
    generic = _write_jsonl(tmp_path / "g.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="chosen_is_safer applies to HH-RLHF dialogues only"):
        load_pairs(generic, chosen_is_safer=True)


def test_real_harmless_base_with_chosen_is_safer_feeds_a_cost_model():
    pairs = load_pairs(shared_file("hh-rlhf-harmless-base/test.jsonl.gz"), chosen_is_safer=True)
    assert len(pairs) == 2307 and all(p.safer == "chosen" for p in pairs)


def test_pku_saferlhf_mapping_and_contradictions(tmp_path):
    base = {"prompt": "p", "response_0": "r0", "response_1": "r1"}
    rows = [
        {
            **base,
            "is_response_0_safe": True,
            "is_response_1_safe": False,
            "better_response_id": 1,
            "safer_response_id": 0,
        },
        # contradictory: the safer response (1) is unsafe, the other (0) is safe
        {
            **base,
            "prompt": "q",
            "is_response_0_safe": True,
            "is_response_1_safe": False,
            "better_response_id": 0,
            "safer_response_id": 1,
        },
    ]
    pairs = load_pairs(_write_jsonl(tmp_path / "pku.jsonl", rows))
    first = pairs[0]
    assert (first.chosen, first.rejected, first.chosen_safe, first.rejected_safe, first.safer) == (
        "r1",
        "r0",
        False,
        True,
        "rejected",
    )
    assert not first.is_contradictory and pairs[1].is_contradictory
    assert pairs.report.contradictory == 1
    bad = [{**rows[0], "better_response_id": 2}]
    with pytest.raises(DataError, match="better_response_id"):
        load_pairs(_write_jsonl(tmp_path / "bad.jsonl", bad))


def test_detect_format_refuses_unknown(tmp_path):
    with pytest.raises(DataError, match="cannot detect the format"):
        detect_format(_write_jsonl(tmp_path / "x.jsonl", [{"text": "hi"}]))


def test_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "xs.csv"
    path.write_text(
        'id,type,prompt,completion,final_label\n1,homonyms,"p","multi\nline",1_full_compliance\n2,contrast_homonyms,q,c,4_other\n'
    )
    with pytest.raises(DataError, match=r"xs.csv:4: column 'final_label' must be one of"):
        load_xstest_completions(path)
    missing = tmp_path / "m.csv"
    missing.write_text("id,prompt\n1,p\n")
    with pytest.raises(DataError, match="missing column"):
        load_xstest_prompts(missing)


def test_real_hh_rlhf_harmless_test_split():
    summary = validate_file(shared_file("hh-rlhf-harmless-base/test.jsonl.gz"))
    assert summary.format == "hh_rlhf"
    assert summary.records == 2312
    assert summary.statistics["pairs"] == 2307  # 5 records compare different contexts
    assert any("5 records skipped" in note for note in summary.notes)


def test_real_xstest_prompts_and_completions():
    prompts = load_xstest_prompts(shared_file("xstest/xstest_prompts.csv"))
    assert len(prompts) == 450
    assert prompts.statistics()["prompt_unsafe"] == 200
    completions = load_xstest_completions(
        shared_file("xstest/model_completions/xstest_v2_completions_gpt4.csv")
    )
    stats = completions.statistics()
    assert (
        stats["label_1_full_compliance"],
        stats["label_2_full_refusal"],
        stats["label_3_partial_refusal"],
    ) == (230, 211, 9)
    unsafe = [r for r in completions if r.safe is False]
    assert all(r.prompt_label == "unsafe" and r.label == "1_full_compliance" for r in unsafe)
    assert (
        detect_format(
            shared_file("xstest/model_completions/xstest_v2_completions_mistralinstruct.csv")
        )
        == "xstest_completions"
    )


def _one_line(tmp_path, line: str):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n", encoding="utf-8")
    return path


def test_duplicate_keys_are_refused_with_line_and_field(tmp_path):
    # json.loads alone keeps the last value: this line would train on chosen="c".
    path = _one_line(tmp_path, '{"prompt": "q", "chosen": "a", "rejected": "b", "chosen": "c"}')
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value).startswith(f"{path}:2: duplicate key 'chosen'")
    assert (info.value.line, info.value.field) == (2, "chosen")


def test_lone_surrogates_are_refused_but_pairs_are_text(tmp_path):
    path = _one_line(tmp_path, '{"prompt": "q \\ud83d\\ude00", "chosen": "a", "rejected": "b"}')
    assert load_pairs(path)[1].prompt == "q \U0001f600"
    path = _one_line(tmp_path, '{"prompt": "q", "chosen": "a \\ud800", "rejected": "b"}')
    with pytest.raises(
        DataError, match=r":2: field 'chosen' holds a lone surrogate \('\\ud800' at character 3\)"
    ):
        load_pairs(path)
    path = _one_line(tmp_path, '{"prompt": "q", "chosen": "a", "rejected": "b", "\\udfff": 1}')
    with pytest.raises(DataError, match="a key holds a lone surrogate"):
        load_pairs(path)


def test_nesting_is_limited(tmp_path):
    from safealign.data.io import MAX_DEPTH

    def nested(depth: int) -> str:
        return (
            '{"prompt": "q", "chosen": "a", "rejected": "b", "m": '
            + "[" * depth
            + "]" * depth
            + "}"
        )

    assert len(load_pairs(_one_line(tmp_path, nested(MAX_DEPTH - 1)))) == 2  # the object is level 1
    for depth in (MAX_DEPTH, 100_000):
        with pytest.raises(DataError, match=f":2: nested more than {MAX_DEPTH} levels deep"):
            load_pairs(_one_line(tmp_path, nested(depth)))


def test_numbers_json_cannot_hold_are_refused(tmp_path):
    for line, message in (
        (
            '{"prompt": "q", "chosen": "a", "rejected": "b", "user_id": ' + "1" * 5000 + "}",
            "an integer with 5000 digits",
        ),
        ('{"prompt": "q", "chosen": "a", "rejected": "b", "w": NaN}', "NaN is not JSON"),
        (
            '{"prompt": "q", "chosen": "a", "rejected": "b", "w": -Infinity}',
            "-Infinity is not JSON",
        ),
        (
            '{"prompt": "q", "chosen": "a", "rejected": "b", "w": 1e999}',
            "the number 1e999 overflows a float",
        ),
    ):
        with pytest.raises(DataError, match=f":2: {message}"):
            load_pairs(_one_line(tmp_path, line))
    ok = '{"prompt": "q", "chosen": "a", "rejected": "b", "user_id": ' + "1" * 4000 + "}"
    assert load_pairs(_one_line(tmp_path, ok))[1].user_id == "1" * 4000


def test_unreadable_files_name_the_os_reason(tmp_path, monkeypatch):
    path = _one_line(tmp_path, json.dumps(GOOD))
    real_open = open

    def refusing_open(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(DataError, match=r"p.jsonl: cannot read the file \(Permission denied\)"):
        load_pairs(path)
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"cannot read the file \(File name too long\)"):
        load_pairs(tmp_path / ("x" * 300))


def test_csv_over_the_field_limit_is_a_data_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text(
        "id,prompt,type,label\n1,ok,homonyms,safe\n2," + "y" * 200_000 + ",homonyms,safe\n"
    )
    with pytest.raises(DataError, match=r"x.csv:3: not valid CSV \(field larger than field limit"):
        load_xstest_prompts(path)
