"""Length-grouped batches: examples of similar length share a batch, so dynamic padding wastes little.

Each epoch is a fresh seeded permutation, cut into mega-batches of ``batch_size * group`` examples;
each mega-batch is sorted by length and cut into batches, and the order of all batches is shuffled.
Every example is still seen exactly once per epoch (the test checks it); only who sits with whom changes.
With ``sort=False`` it is a plain seeded shuffle. The epoch is set by the loop (``set_epoch``), so a resumed
run replays exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """A batch sampler: yields lists of example indices of similar length (pass as ``batch_sampler``)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, group: int = 50, sort: bool = True):
        self.lengths = torch.as_tensor(lengths)
        self.sort = sort
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.epoch = 0

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size * self.group)
        return full * self.group + -(-rest // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int) -> list[torch.Tensor]:
        """The index batches of one epoch (deterministic in seed and epoch)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=g)
        out: list[torch.Tensor] = []
        for mega in order.split(self.batch_size * self.group):
            if self.sort:
                mega = mega[torch.argsort(self.lengths[mega], descending=True, stable=True)]
            out.extend(mega.split(self.batch_size))
        perm = torch.randperm(len(out), generator=g)
        return [out[i] for i in perm]

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches(self.epoch):
            yield b.tolist()
