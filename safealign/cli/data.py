"""Handlers of the data commands: ``data validate`` and ``world export``.

``data validate`` loads a preference file strictly and prints its counts or the first
``PATH:LINE:`` problem; ``world export`` writes the built-in synthetic world to files, so that the
bring-your-own-data path can be exercised on known ground truth. Heavy imports stay inside the
handlers so that ``safealign --help`` starts fast.
"""

from __future__ import annotations

import argparse

from safealign.cli.common import EXIT_OK


def cmd_data_validate(args: argparse.Namespace) -> int:
    """``safealign data validate PATH``: print the file's counts, or why it is invalid."""
    from safealign.data import validate_file

    print(validate_file(args.path, format=args.format).render())
    return EXIT_OK


def cmd_world_export(args: argparse.Namespace) -> int:
    """``safealign world export --out DIR``: write the synthetic world's files to DIR."""
    from safealign import load_config
    from safealign.data import SyntheticWorld, export_world

    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    config = load_config(args.config, overrides)
    world = SyntheticWorld(config.data.synthetic, seed=config.seed)
    paths = export_world(world, args.out, num_candidates=config.data.synthetic.num_candidates)
    stats = world.pairs.statistics()
    print(
        f"synthetic world (seed {config.seed}): {stats['pairs']} pairs, {stats['users']} users, "
        f"{len(world.prompts)} prompts"
    )
    for path in paths:
        print(f"  wrote {path}")
    return EXIT_OK
