"""Handler of ``safealign export-hf MODEL_DIR OUT``: a scoring model as a Hugging Face
``AutoModelForSequenceClassification`` (:func:`safealign.models.export_sequence_classifier`).
Heavy imports stay inside the handler."""

from __future__ import annotations

import argparse

from safealign.cli.common import EXIT_OK


def cmd_export_hf(args: argparse.Namespace) -> int:
    """Write OUT from MODEL_DIR; exit 2 (with every reason) for a model with no exact equivalent."""
    from safealign.models import export_sequence_classifier

    out = export_sequence_classifier(args.model_dir, args.out)
    print(
        f"wrote {out}: AutoModelForSequenceClassification (num_labels=1) + tokenizer; "
        "its logits equal safealign's scores"
    )
    return EXIT_OK
