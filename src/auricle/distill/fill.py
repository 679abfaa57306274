"""The fill modes of the classes outside a view's stored top-k (auricle.distill.targets), without torch.

The command line lists them in its help, which must work on an install without torch.
"""

FILL_MODES = ("zero", "last_mean", "last_half", "last_random", "uniform")
DEFAULT_FILL = "zero"
