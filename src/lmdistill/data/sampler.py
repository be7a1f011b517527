"""Length-grouped batches: examples of similar length share a batch, so dynamic padding wastes little.

Each epoch is a fresh seeded permutation, cut into mega-batches of ``batch_size * group`` examples;
each mega-batch is sorted by length and cut into batches, and the order of all batches is shuffled.
Every example is still seen exactly once per epoch (the test checks it); only who sits with whom changes.
With ``sort=False`` it is a plain seeded shuffle. The epoch is set by the loop (``set_epoch``), so a resumed
run replays exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler

from lmdistill.errors import LmdistillError


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """A batch sampler: yields lists of example indices of similar length (pass as ``batch_sampler``)."""

    def __init__(
        self, lengths: list[int], batch_size: int, seed: int = 0, group: int = 50, sort: bool = True
    ):
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


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Batches by a token budget (as fairseq's ``--max-tokens``): each batch holds as many examples as fit in
    ``max_tokens`` padded positions per process, so short sentences travel in large batches and long ones in
    small batches, and every step does about the same work.

    The batches are formed once: examples sorted by length (ties in a seeded random order), cut greedily so
    that ``examples per process x longest length (rounded up to multiple)`` stays within the budget, every
    batch a multiple of ``processes`` examples (split_batches gives each process the same share; only the
    last batch may be smaller). Each epoch shuffles the order of the batches with the seed, so the number of
    steps per epoch is fixed and every example is seen exactly once per epoch.
    """

    def __init__(
        self, lengths: list[int], max_tokens: int, seed: int = 0, multiple: int = 8, processes: int = 1
    ):
        lengths = torch.as_tensor(lengths)
        padded = (lengths + multiple - 1) // multiple * multiple
        if len(lengths) and int(padded.max()) > max_tokens:
            raise LmdistillError(
                f"training.max_tokens={max_tokens} is smaller than the longest example ({int(lengths.max())} tokens, "
                f"{int(padded.max())} padded): set training.max_tokens to at least {int(padded.max())}"
            )
        self.seed = seed
        self.epoch = 0
        g = torch.Generator().manual_seed(seed)
        tie = torch.randperm(len(lengths), generator=g)
        order = tie[
            torch.argsort(padded[tie], stable=True)
        ].tolist()  # ascending: a batch's longest is its last
        self._batches: list[list[int]] = []
        start = 0
        while start < len(order):
            end = min(start + processes, len(order))  # one example per process at least
            while end < len(order):
                nxt = min(end + processes, len(order))
                per_process = -(-(nxt - start) // processes)
                if per_process * int(padded[order[nxt - 1]]) > max_tokens:
                    break
                end = nxt
            self._batches.append(order[start:end])
            start = end

    def __len__(self) -> int:
        return len(self._batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        """The index batches of one epoch (the same batches every epoch, in a seeded order per epoch)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return [self._batches[i] for i in torch.randperm(len(self._batches), generator=g).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)


class ProcessShard(Sampler[list[int]]):
    """This process's share of every global batch that ``batches`` yields: contiguous slices as accelerate's
    ``split_batches`` cuts them, but for batches of any size (token budgets, the short batch of an epoch
    wherever it falls), so no batch is skipped. Shares differ by at most one example; a batch with fewer
    examples than processes is filled up with the epoch's first examples (every process needs a batch)."""

    def __init__(self, batches: Sampler[list[int]], process_index: int, num_processes: int):
        self.batches, self.index, self.n = batches, process_index, num_processes

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        first: list[int] = []
        for batch in self.batches:
            first = first or list(batch)
            if len(batch) < self.n:
                batch = (list(batch) + first * self.n)[: self.n]
            share, extra = divmod(len(batch), self.n)
            start = self.index * share + min(self.index, extra)
            yield list(batch[start : start + share + (self.index < extra)])


@dataclass
class Mix:
    """Which training examples are labelled and which are not (transfer texts, augmented copies), and the share
    of the unlabelled ones in each batch (None: in proportion to the pools)."""

    labelled: list[int]
    unlabelled: list[int]
    ratio: float | None = None


class MixedBatchSampler(Sampler[list[int]]):
    """Batches that mix two pools in a fixed ratio (a transfer set with the labelled data): every batch holds
    ``k_u = round(ratio * batch_size)`` (at least 1) examples of the unlabelled pool and the rest of the labelled
    one. An epoch lasts until the pool that needs more batches at this ratio has been seen once; the other pool
    is reshuffled and repeated as often as that takes. Within each pool, examples of similar length are grouped as
    in :class:`LengthGroupedBatchSampler`. Deterministic in the seed and the epoch (exact resume).
    """

    def __init__(
        self,
        labelled: list[int],
        unlabelled: list[int],
        lengths: list[int],
        batch_size: int,
        ratio: float | None,
        seed: int = 0,
        group: int = 50,
        sort: bool = True,
    ):
        if not unlabelled:
            raise LmdistillError("a mixed batch needs unlabelled examples (data.unlabeled or data.augment)")
        n_l, n_u = len(labelled), len(unlabelled)
        ratio = n_u / (n_l + n_u) if ratio is None else ratio
        self.k_u = min(batch_size, max(1, round(ratio * batch_size)))
        self.k_l = batch_size - self.k_u if n_l else 0
        self.pools = [
            torch.as_tensor(labelled, dtype=torch.long),
            torch.as_tensor(unlabelled, dtype=torch.long),
        ]
        self.lengths = torch.as_tensor(lengths)
        self.n = max(-(-n_u // self.k_u), -(-n_l // self.k_l) if self.k_l else 0)
        self.seed, self.group, self.sort, self.epoch = seed, group, sort, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunks(self, pool: torch.Tensor, k: int, g: torch.Generator) -> list[torch.Tensor]:
        """``self.n`` chunks of ``k`` examples of ``pool`` (as many passes as needed, each a fresh shuffle),
        length-grouped, in a shuffled order."""
        need = self.n * k
        stream = torch.cat(
            [pool[torch.randperm(len(pool), generator=g)] for _ in range(-(-need // len(pool)))]
        )
        stream = stream[:need]
        chunks: list[torch.Tensor] = []
        for mega in stream.split(k * self.group):
            if self.sort:
                mega = mega[torch.argsort(self.lengths[mega], descending=True, stable=True)]
            chunks.extend(mega.split(k))
        return [chunks[i] for i in torch.randperm(len(chunks), generator=g)]

    def batches(self, epoch: int) -> list[list[int]]:
        """The index batches of one epoch (labelled examples first in each batch)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        unlabelled = self._chunks(self.pools[1], self.k_u, g)
        labelled = (
            self._chunks(self.pools[0], self.k_l, g)
            if self.k_l
            else [torch.empty(0, dtype=torch.long)] * self.n
        )
        return [torch.cat([a, b]).tolist() for a, b in zip(labelled, unlabelled)]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)
