"""safealign: align language models from private preference data, certifiably safe and fair.

Three guarantees, one signed report: reward and cost models trained with DP-SGD (privacy), a
high-confidence safety test before release (HC-RLHF), and the worst-off user group served
(MaxMin-RLHF). See the README for the two commands and ``safealign --help``.
"""

from safealign._version import __version__

__all__ = ["__version__"]
