"""Token streams cut into (batch, length) chunks for truncated backpropagation.

A split of ``N`` tokens is laid out as ``B`` contiguous rows of ``N // B`` tokens (the usual
word-language-model layout); chunk ``i`` holds columns ``[i·L, i·L + L]`` (inputs and the
targets shifted by one). Under data parallelism each rank takes an equal, contiguous block
of the rows, so ``world`` ranks of ``B / world`` rows see exactly the rows that one process
with ``B`` rows would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def batchify(tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(N,)`` ids -> ``(B, N // B)`` rows, dropping the remainder."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = tokens.numel() // batch_size
    if n < 2:
        raise ValueError(f"a split of {tokens.numel()} tokens is too short for batch size {batch_size}")
    return tokens[: n * batch_size].reshape(batch_size, n)


@dataclass
class ChunkStream:
    """Fixed-order chunks of a batchified split; chunk ``i`` is addressable directly.

    Args:
        tokens: the split, ``(N,)`` token ids.
        batch_size: global number of rows ``B``.
        bptt: chunk length ``L``.
        rank, world_size: this rank's share of the rows (``B`` must divide by ``world_size``).
    """

    tokens: torch.Tensor
    batch_size: int
    bptt: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.bptt < 1:
            raise ValueError(f"bptt must be >= 1, got {self.bptt}")
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by world size {self.world_size}")
        rows = batchify(self.tokens, self.batch_size)
        per = self.batch_size // self.world_size
        self.rows = rows[self.rank * per : (self.rank + 1) * per].long()  # (B / world, n)
        self.num_chunks = (self.rows.shape[1] - 1 + self.bptt - 1) // self.bptt

    def __len__(self) -> int:
        return self.num_chunks

    def chunk(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets ``(B / world, ≤ L)`` of chunk ``i % len(self)``."""
        s = (i % self.num_chunks) * self.bptt
        e = min(s + self.bptt, self.rows.shape[1] - 1)
        return self.rows[:, s:e], self.rows[:, s + 1 : e + 1]

    def __iter__(self):
        for i in range(self.num_chunks):
            yield self.chunk(i)
