"""The release inventory against a real run directory and the report schema, and the attacks it
guards against: a plain hash of the training data in a released file, exact group counts, and a
report ε below the ledger's (EM's count noise left out of the composition)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from safealign.audits.inventory import (
    RELEASED_FILES,
    classify,
    outside_guarantee,
    released_file,
    unclassified_fields,
)
from safealign.audits.report import load_schema
from safealign.config import load_config
from safealign.data.source import load_source, make_splits
from safealign.privacy.ledger import PrivacyLedger
from safealign.run import run
from tests._inventory import unclassified_run_files
from tests._tiny_run import CONFIG, TINY_WORLD

# The fastest whole run (tests/_tiny_run.py), with EM and a small count noise
# (a large ε per iteration: leaving it out of the report's composition shows at once).
TINY = [
    *TINY_WORLD,
    "groups.mode=em",
    "groups.em_max_iters=2",
    "groups.em_count_noise=1.0",
    "budget.epsilon=50",
    "safety.cost_threshold=1",  # a probability limit of 1: every policy passes
]
_HEX64 = re.compile(rb"[0-9a-f]{64}")


@pytest.fixture(scope="module")
def em_run(tmp_path_factory):
    """A whole tiny run with EM groups (about 10-30 s on one CPU thread)."""
    out = tmp_path_factory.mktemp("inventory") / "run"
    config = load_config(CONFIG, [*TINY, f"budget.ledger={out.parent / 'ledger.sqlite'}"])
    return config, run(config, out, progress=False)


def _files(out: Path):
    for path in sorted(out.rglob("*")):
        if path.is_file():
            yield path, path.relative_to(out).as_posix()


@pytest.mark.integration
def test_every_released_field_of_a_run_directory_is_classified(em_run):
    _, result = em_run
    assert unclassified_run_files(result.out_dir) == []


def test_an_unclassified_field_fails_the_inventory():
    receipt = released_file("cost/receipt.json")
    assert unclassified_fields({"kind": "cost", "epsilon": 1.0}, receipt) == []
    # The fields old runs released: exact cluster sizes and a loss on private batches.
    groups = released_file("groups/groups.json")
    leaked = {"names": ["cluster-0"], "assignment_counts": {"cluster-0": 7}}
    assert unclassified_fields(leaked, groups) == ["assignment_counts.cluster-0"]
    assert unclassified_fields({"metrics": {"train/final_loss": 0.7}}, receipt) == [
        "metrics.train/final_loss"
    ]
    assert released_file("new_stage/summary.json") is None  # a new file must be added first


def _types(node) -> tuple[str, ...]:
    kind = node.get("type", ())
    return (kind,) if isinstance(kind, str) else tuple(kind)


def _schema_paths(node, schema, path=()):
    """Every field path the report schema defines (``**`` where it allows any property)."""
    if "$ref" in node:  # "#/$defs/name" or "#/properties/name"
        _, section, name = node["$ref"].split("/")
        node = schema[section][name]
    children = False
    for branch in node.get("anyOf", ()):
        if isinstance(branch, dict) and branch.get("type") != "null":
            yield from _schema_paths(branch, schema, path)
            children = True
    for key, child in (node.get("properties") or {}).items():
        yield from _schema_paths(child, schema, (*path, key))
        children = True
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _schema_paths(extra, schema, (*path, "*"))
        children = True
    elif extra is True or (extra is None and "object" in _types(node)):  # JSON Schema: open
        yield (*path, "**")
        children = True
    if isinstance(node.get("items"), dict):
        yield from _schema_paths(node["items"], schema, (*path, "[]"))
        children = True
    if not children:
        yield path


def _segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in path.replace("[]", ".[]").split(".") if s)


def _covers(schema_path: tuple[str, ...], entry: tuple[str, ...]) -> bool:
    """The schema defines the entry's field (``*`` and a final ``**`` are wildcards)."""
    for i, seg in enumerate(schema_path):
        if seg == "**" or (i < len(entry) and entry[i] == "**"):
            return True
        if i >= len(entry) or (seg != "*" and entry[i] not in ("*", seg)):
            return False
    return len(entry) == len(schema_path) or entry[len(schema_path) :] == ("**",)


def test_every_field_of_the_report_schema_is_classified():
    schema = load_schema()
    entries = released_file("report.json").entries
    paths = set(_schema_paths(schema, schema))
    unknown = []
    for path in paths:
        if path[-1:] == ("**",):  # free-form: classified below it, or as a whole subtree
            head = path[:-1]
            below = any(_segments(e.path)[: len(head)] == head for e in entries)
            if not below and classify(entries, head) is None:
                unknown.append(".".join(path))
        elif classify(entries, path) is None:
            unknown.append(".".join(path))
    assert sorted(unknown) == []
    # ... and no classified report field is missing from the schema (a stale entry).
    stale = [e.path for e in entries if not any(_covers(p, _segments(e.path)) for p in paths)]
    assert stale == []


@pytest.mark.integration
def test_no_released_file_holds_a_plain_hash_of_private_data(em_run):
    config, result = em_run
    pairs, _ = load_source(config)
    splits = make_splits(pairs, config)
    private = {pairs.fingerprint, splits.train.fingerprint, splits.eval.fingerprint}
    for user in pairs.user_ids:  # any user subset an EM cluster could have trained on alone
        private.add(splits.train.__class__(
            tuple(p for p in splits.train if p.user_id == user)).fingerprint)  # fmt: skip
    found = {}
    for path, relative in _files(result.out_dir):
        if relative.endswith(".safetensors"):
            continue
        hits = {h.decode() for h in _HEX64.findall(path.read_bytes())} & private
        if hits:
            found[relative] = sorted(h[:12] for h in hits)
    assert found == {}
    # Commitments still compare: the models' data is the training split, under one key.
    scope = result.report["privacy"]["scope"]
    assert scope["notes"] == [] and scope["dataset_fingerprints"] == [
        scope["train_split_fingerprint"]
    ]


@pytest.mark.integration
def test_group_releases_carry_no_exact_counts_or_training_losses(em_run):
    _, result = em_run
    meta = json.loads((result.out_dir / "groups" / "groups.json").read_text())
    assert "assignment_counts" not in meta
    assert meta["iterations"] == 2  # em_max_iters: fixed, whatever the data
    for receipt in meta["receipts"]:
        assert receipt["num_units"] is None and receipt["num_pairs"] is None
        assert receipt["metrics"] == {}
    for path, _ in _files(result.out_dir):
        if path.suffix in (".json", ".md", ".html"):
            assert "final_loss" not in path.read_text(), path
    for entry in result.report["groups"]["groups"].values():
        assert entry["size"] is None


@pytest.mark.integration
def test_report_epsilon_is_the_ledgers_with_em_count_noise(em_run):
    config, result = em_run
    (summary,) = PrivacyLedger(config.budget.ledger).summary()  # a fresh ledger: this run only
    privacy = result.report["privacy"]
    counts = [m for m in privacy["mechanisms"] if m["kind"] == "em_cluster_sizes"]
    assert len(counts) == 2 and all(m["noise_multiplier"] == 1.0 for m in counts)
    assert privacy["accountant"] == summary.accountant
    assert privacy["epsilon"] >= summary.epsilon - 1e-9
    assert privacy["epsilon"] == pytest.approx(summary.epsilon, rel=1e-9)


@pytest.mark.integration
def test_the_report_lists_what_is_outside_the_guarantee(em_run):
    _, result = em_run
    listed = result.report["privacy"]["outside_guarantee"]
    assert listed == outside_guarantee(result.report["config"])
    assert {"file": "*receipt.json", "field": "metrics.eval/*"} in [
        {k: o[k] for k in ("file", "field")} for o in listed
    ]
    for name in ("report.md", "report.html"):
        text = (result.out_dir / name).read_text()
        assert "NOT covered by the privacy guarantee" in text
        assert "metrics.eval/" in text


def test_opting_in_to_em_early_stopping_is_listed_outside_the_guarantee():
    fixed = outside_guarantee({"groups": {"mode": "em", "em_stop_early": False}})
    early = outside_guarantee({"groups": {"mode": "em", "em_stop_early": True}})
    given = outside_guarantee({"groups": {"mode": "given", "em_stop_early": True}})
    assert given == outside_guarantee() and len(fixed) == len(given) + 1  # an emptied cluster
    assert [o for o in early if o not in fixed] == [
        {
            "file": "groups/groups.json",
            "field": "iterations",
            "reason": early[-1]["reason"],
        }
    ]
    assert "depends on the data" in early[-1]["reason"]


def test_the_privacy_audit_file_is_classified():
    from safealign.privacy.audit import AuditResult

    result = AuditResult(0.4, 2.0, 1.1, 256, 40, 25, 0.95, 100, 0.01)
    assert unclassified_fields(result.to_dict(), released_file("audit/privacy_audit.json")) == []


def test_every_entry_has_a_kind_and_a_reason():
    for released in RELEASED_FILES:
        for entry in released.entries:
            assert entry.kind in ("dp", "post_processing", "public", "not_covered"), entry
            assert entry.reason.strip(), entry


def test_commitments_hide_the_hash_and_still_compare(tmp_path, monkeypatch):
    from safealign.privacy.training import commit_fingerprint, ledger_commitment_key

    fingerprint = "ab" * 32
    key = ledger_commitment_key(tmp_path / "ledger.sqlite")
    assert (tmp_path / "ledger.sqlite.key").is_file()  # the secret sits beside the ledger
    commitment = commit_fingerprint(key, fingerprint)
    assert commitment != fingerprint and _HEX64.fullmatch(commitment.encode())
    assert commit_fingerprint(ledger_commitment_key(tmp_path / "ledger.sqlite"), fingerprint) == (
        commitment
    )  # equal data, one key: equal commitments (align and certify compare them)
    other = ledger_commitment_key(tmp_path / "other.sqlite")
    assert commit_fingerprint(other, fingerprint) != commitment
    monkeypatch.setenv("SAFEALIGN_HOME", str(tmp_path / "home"))
    ledger_commitment_key(None)  # no ledger named: the per-user default ledger's key
    assert (tmp_path / "home" / "ledger.sqlite.key").is_file()
