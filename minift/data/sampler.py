"""Which examples go into which batch: one sampler for one process, for resume, and for P processes
(lessons/10-data.md).

Epoch ``e``'s order is a permutation drawn from a generator seeded with ``(seed, e)`` alone, so
- it is the same on every run with the same seed, whatever else consumed random numbers;
- a resumed run can rebuild epoch ``e``'s order and skip the batches it already did;
- under ``torchrun`` every process computes the same order; global batch ``t`` is
  ``order[t*B:(t+1)*B]`` with ``B = batch_size * world_size``, and process ``r`` takes the ``r``-th
  contiguous slice of it. A single process is the ``world_size = 1`` case, so global step ``t`` sees
  the same examples whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Yields lists of example indices: this process's part of each global batch.

    ``batch_size`` is per process. Call ``set_epoch(e)`` before iterating epoch ``e`` (each
    ``__iter__`` otherwise moves on to the next epoch by itself), and ``skip(k)`` to start the
    coming epoch at its ``k``-th global batch (resume).
    """

    def __init__(self, num_examples: int, batch_size: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if num_examples <= 0:
            raise ValueError("cannot sample batches from an empty list of examples")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_examples, self.batch_size, self.shuffle, self.seed = num_examples, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 1, 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, batches: int) -> None:
        self.start = batches

    def order(self, epoch: int) -> list[int]:
        """The permutation of epoch ``epoch``; the seed mixes (seed, epoch) so epochs differ."""
        if not self.shuffle:
            return list(range(self.num_examples))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_examples, generator=g).tolist()

    def __len__(self) -> int:
        """Global batches in an epoch. The last one may be short; with several processes, a last batch
        too short to give every process an example is dropped (a process with no batch would leave
        the others waiting for its gradients forever)."""
        full, rest = divmod(self.num_examples, self.global_batch_size)
        return full + (1 if rest >= self.world_size else 0)

    def __iter__(self) -> Iterator[list[int]]:
        order, B = self.order(self.epoch), self.global_batch_size
        start, self.start = self.start, 0
        self.epoch += 1  # the next iteration is the next epoch, even if this one is left early
        for t in range(start, len(self)):
            batch = order[t * B:(t + 1) * B]
            # Process r takes batch[r L / P : (r + 1) L / P]: slices differ in size by at most one, so a
            # short last batch of L >= P examples leaves no process empty-handed (ceil(L / P) each could).
            L, P = len(batch), self.world_size
            yield batch[self.rank * L // P:(self.rank + 1) * L // P]
