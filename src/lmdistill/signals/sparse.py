"""The teacher's top-k next-token distribution as a teacher signal (live or cached).

The data type and its construction are loss math and live in :mod:`lmdistill.losses.topk` (the losses import
nothing from the signals); this module is where the signals find them.
"""

from lmdistill.losses.topk import TopKSignal, check_temperature, topk_signal

__all__ = ["TopKSignal", "check_temperature", "topk_signal"]
