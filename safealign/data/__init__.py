"""Preference records, loaders, validation, disjoint fingerprinted splits, the synthetic world."""

from safealign._lazy import lazy_exports

_EXPORTS = {
    "safealign.data.records": ("PreferencePair", "LabelledResponse", "PairDataset", "LoadReport"),
    "safealign.data.loaders": ("load_pairs", "detect_format"),
    "safealign.data.responses": ("load_responses",),
    "safealign.data.source": ("load_source", "make_splits"),
    "safealign.data.splits": ("Splits", "SealedDataset", "split_pairs"),
    "safealign.data.synthetic": ("SyntheticWorld",),
    "safealign.data.export": ("export_world",),
    "safealign.data.validate": ("validate_file",),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
