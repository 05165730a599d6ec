"""What each iteration sees: its learning rate (poly decay with warm-up) and its batch (a function of the seed and
the iteration number alone, which makes ``--resume`` exact whatever the number of loader workers)."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def poly_lr(base_lr: float, iteration: int, total: int, power: float, warmup_iters: int = 0,
            warmup_factor: float = 0.1) -> float:
    """Poly decay ``base·(1 − it/total)^power``, with an optional linear warm-up from ``warmup_factor·base``."""
    lr = base_lr * (1.0 - min(iteration, total) / total) ** power
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        lr *= warmup_factor * (1 - alpha) + alpha
    return lr


class IterationBatches(Sampler[list[tuple[int, int]]]):
    """Per-rank batches of ``(index, augmentation seed)`` for iterations ``start .. total − 1``.

    Like ``DistributedSampler`` with ``set_epoch``: the dataset is walked epoch by epoch in a permutation drawn
    from (seed, epoch), and the global batch of iteration *i* is positions [i·B, (i+1)·B) of that walk, split
    between ranks. Because everything derives from (seed, i), a resumed run sees exactly the batches the
    uninterrupted one would have, whatever the number of loader workers.
    """

    def __init__(self, size: int, batch_per_rank: int, world: int, rank: int, seed: int, start: int, total: int):
        if size < 1:
            raise ValueError("the training set is empty")
        self.size, self.batch, self.world, self.rank = size, batch_per_rank, world, rank
        self.seed, self.start, self.total = seed, start, total
        self._epoch, self._perm = -1, np.arange(0)

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._perm

    def batch_at(self, iteration: int) -> list[tuple[int, int]]:
        first = iteration * self.batch * self.world + self.rank * self.batch
        out = []
        for pos in range(first, first + self.batch):
            epoch, offset = divmod(pos, self.size)
            aug_seed = int(np.random.SeedSequence([self.seed, pos]).generate_state(1)[0])
            out.append((int(self._permutation(epoch)[offset]), aug_seed))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start, self.total):
            yield self.batch_at(iteration)
