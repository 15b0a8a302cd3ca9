"""``policy.method: tilting`` was renamed ``best_of_k``: one name per method.

A config still saying ``tilting`` is refused (exit 2) with the new value named, before anything
is read or charged. A run directory made before the rename needs nothing: its ``policy.json``
never recorded the method's name (its policy kind is ``tilted_best_of_k``, its selection method
``hc_rlhf``), so it is certified under the renamed config as it is.
"""

from __future__ import annotations

import json

import pytest

from safealign.cli import main
from safealign.config import load_config
from safealign.errors import ConfigError
from tests._tiny_run import CONFIG, TINY_WORLD

RENAMED = "policy.method: 'tilting' was renamed 'best_of_k' (the same method)"


def test_the_old_name_is_refused_naming_the_new_one():
    with pytest.raises(ConfigError, match="renamed 'best_of_k'") as caught:
        load_config(None, ["policy.method=tilting"])
    assert caught.value.problems == [f"{RENAMED}; write policy.method: best_of_k"]
    assert load_config(None, []).policy.method == "best_of_k"


def test_a_config_file_saying_tilting_exits_2_before_anything_is_charged(tmp_path, capsys):
    config = tmp_path / "old.yaml"
    config.write_text("policy: {method: tilting, beta: 0.1, num_candidates: 4}\n")
    out, ledger = tmp_path / "run", tmp_path / "ledger.sqlite"
    assert main(["run", str(config), "--out", str(out), f"budget.ledger={ledger}"]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and RENAMED in err
    assert not out.exists() and not ledger.exists()


@pytest.mark.integration
def test_a_run_directory_from_before_the_rename_certifies_under_the_renamed_config(tmp_path):
    out = tmp_path / "run"
    args = [*TINY_WORLD, "safety.cost_threshold=1", f"budget.ledger={tmp_path / 'ledger.sqlite'}"]
    assert main(["align", CONFIG, "--out", str(out), *args]) == 0
    text = (out / "policy.json").read_text()
    assert '"tilting"' not in text and '"best_of_k"' not in text  # no method name to migrate
    policy = json.loads(text)["policy"]
    assert policy["policy"] == "tilted_best_of_k"
    resolved = out / "config.resolved.yaml"  # what a pre-rename run left there
    resolved.write_text(resolved.read_text().replace("method: best_of_k", "method: tilting"))
    assert main(["certify", CONFIG, "--out", str(out), *args]) in (0, 1)
    certificate = json.loads((out / "certificate.json").read_text())
    assert certificate["sampler_settings"] == policy
