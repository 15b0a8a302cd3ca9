"""Every file name of a run directory, in one place.

A run directory holds one run's artefacts (``safealign run``, or ``align`` then ``certify``)::

    config.resolved.yaml      the resolved configuration
    cost/model/, cost/receipt.json          the DP cost model and its privacy receipt
    reward/model/, reward/receipt.json      the DP reward model (without groups)
    groups/group-K/, groups/groups.json     the per-group reward models and their receipts
    policy.json               the aligned policy (``align``), read back by ``certify``
    certificate.json          the safety test's certificate (``certify``)
    certificates/*.json       certificates of earlier policies, never deleted
    keys/public.pem           the public half of the demo signing key
    report.json, report.html, report.md    the signed audit report and its renderings
    safety_responses.jsonl    the safety test's sampled responses, kept for labelling
                              (``certify --export-labelling``): PRIVATE, never released
    base/ or sft/             a built-in policy LM's base model (tiny-gpt2 / world-sft), HF format
    lm/round-R/               an LM policy's cached candidates and adapter after round R (resume)
    policy/                   the released LM policy: PEFT adapter, tokenizer, generation_config.json
    embeddings/               frozen-backbone embeddings of the run's texts: PRIVATE (computed
                              from the training data), never in the report; delete before sharing

Lower layers that write into a run directory keep their own names (``privacy.training`` writes
``model/`` and ``receipt.json``, the audit writer ``report.*``); they are the same strings as
here, which ``tests/run/test_paths.py`` checks together with the release inventory's patterns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safealign.audits.report import FORMATS
from safealign.audits.signing import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME

CONFIG_FILE = "config.resolved.yaml"
POLICY_FILE = "policy.json"
CERTIFICATE_FILE = "certificate.json"
CERTIFICATES_DIR = "certificates"
MODEL_DIR = "model"
RECEIPT_FILE = "receipt.json"
GROUPS_DIR = "groups"
GROUPS_FILE = "groups.json"
KEYS_DIR = "keys"
PRIVACY_AUDIT_FILE = "privacy_audit.json"
EMBEDDINGS_DIR = "embeddings"
SAFETY_RESPONSES_FILE = "safety_responses.jsonl"
LM_BASE_DIR, SFT_DIR, LM_ROUNDS_DIR, POLICY_DIR = "base", "sft", "lm", "policy"
CANDIDATES_FILE, ADAPTER_DIR = "candidates.json", "adapter"
#: The signed report and its renderings: never pinned in the report's own artifact manifest.
REPORT_FILES = frozenset(FORMATS.values())


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run directory (nothing is created by asking)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def policy(self) -> Path:
        return self.root / POLICY_FILE

    @property
    def certificate(self) -> Path:
        return self.root / CERTIFICATE_FILE

    @property
    def certificates(self) -> Path:
        return self.root / CERTIFICATES_DIR

    def model_dir(self, kind: str) -> Path:
        """The training output directory of the ``kind`` model (``cost`` or ``reward``)."""
        return self.root / kind

    @property
    def groups(self) -> Path:
        return self.root / GROUPS_DIR

    @property
    def groups_file(self) -> Path:
        return self.groups / GROUPS_FILE

    @property
    def public_key(self) -> Path:
        return self.root / KEYS_DIR / PUBLIC_KEY_NAME

    @property
    def stale_private_key(self) -> Path:
        """A demo private key that runs made before demo keys moved out left here."""
        return self.root / KEYS_DIR / PRIVATE_KEY_NAME

    @property
    def privacy_audit(self) -> Path:
        return self.root / PRIVACY_AUDIT_FILE

    @property
    def safety_responses(self) -> Path:
        """The safety test's response texts, kept for labelling (private; run.labelling)."""
        return self.root / SAFETY_RESPONSES_FILE

    @property
    def lm_base(self) -> Path:
        """The built-in ``tiny-gpt2`` policy base, saved once (HF model directory)."""
        return self.root / LM_BASE_DIR

    @property
    def sft(self) -> Path:
        """The built-in ``world-sft`` policy base, trained once (HF model directory)."""
        return self.root / SFT_DIR

    def lm_round(self, index: int | str) -> Path:
        """Round ``index`` of LM alignment (``final`` for the released LM's evaluation)."""
        return self.root / LM_ROUNDS_DIR / f"round-{index}"

    @property
    def policy_dir(self) -> Path:
        """The released LM policy: a PEFT adapter directory with its generation_config.json."""
        return self.root / POLICY_DIR

    @property
    def embeddings(self) -> Path:
        """The frozen-backbone embedding cache (private; :mod:`safealign.models.embeddings`)."""
        return self.root / EMBEDDINGS_DIR


def group_model_dir(index: int) -> str:
    """The ``index``-th group's reward model directory, relative to :attr:`RunPaths.groups`."""
    return f"group-{index}"


def relative_model(kind: str) -> str:
    """The ``kind`` model's directory relative to the run directory, as policy.json records it."""
    return f"{kind}/{MODEL_DIR}"


def relative_group_model(index: int) -> str:
    """The ``index``-th group model's directory relative to the run directory."""
    return f"{GROUPS_DIR}/{group_model_dir(index)}"
