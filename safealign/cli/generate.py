"""Handler of ``safealign generate OUT --prompts FILE``: sample the certified LM policy of a run
directory with exactly its certified sampler settings (:mod:`safealign.run.generation`)."""

from __future__ import annotations

import argparse
import json

from safealign.cli.common import EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    """Print (or write with ``--out``) one JSONL line per prompt: prompt, response, sampler."""
    from safealign._atomic import atomic_write_text
    from safealign.run import generate_responses, read_prompts

    rows = generate_responses(
        args.run_dir, read_prompts(args.prompts), seed=args.seed,
        allow_uncertified=args.uncertified,
    )  # fmt: skip
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    if args.out is None:
        print(text, end="")
    else:
        atomic_write_text(args.out, text)
        print(f"generated {len(rows)} responses with the certified settings: wrote {args.out}")
    return EXIT_OK
