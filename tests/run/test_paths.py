"""The run directory's file names live in safealign.run.paths; the lower layers that write into a
run directory use the same strings, and the release inventory classifies every one of them."""

from __future__ import annotations

from pathlib import Path

from safealign.audits.inventory import released_file
from safealign.audits.report import FORMATS
from safealign.run import RunPaths
from safealign.run import paths as names


def test_every_file_name_of_a_run_is_classified_by_the_release_inventory():
    paths = RunPaths(Path("/run"))
    files = [
        paths.config,
        paths.policy,
        paths.certificate,
        paths.certificates / "attempt-1.json",
        paths.model_dir("cost") / names.RECEIPT_FILE,
        paths.model_dir("reward") / names.MODEL_DIR / "scalar_model.json",
        paths.groups_file,
        paths.groups / names.group_model_dir(0) / "scalar_model.json",
        paths.public_key,
        paths.privacy_audit,
        *(paths.root / name for name in names.REPORT_FILES),
    ]
    unclassified = [str(f) for f in files if released_file(str(f.relative_to("/run"))) is None]
    assert unclassified == []


def test_lower_layers_write_the_names_of_the_run_layer(tmp_path):
    from safealign.config import load_config
    from safealign.data.synthetic import SyntheticWorld
    from safealign.models import embeddings
    from safealign.privacy.training import save_training_output, train_reward_model

    assert set(FORMATS.values()) == names.REPORT_FILES
    assert embeddings.RUN_CACHE_DIR == names.EMBEDDINGS_DIR
    config = load_config(None, ["data.synthetic.num_prompts=40", "data.synthetic.num_users=4",
                                "data.synthetic.pairs_per_user=10", "reward_model.privacy.target_epsilon=null"])  # fmt: skip
    pairs = SyntheticWorld(config.data.synthetic, seed=0).pairs
    result = train_reward_model(pairs, config=config.reward_model, seed=0, progress=False)
    receipt = save_training_output(result, tmp_path)
    assert receipt == tmp_path / names.RECEIPT_FILE
    assert (tmp_path / names.MODEL_DIR).is_dir()
