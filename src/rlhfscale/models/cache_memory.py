"""Host memory that the KV caches of successive rollouts take in turn, so that each does not fault in fresh pages.

Memory fresh from the allocator costs the CPU a page fault on the first touch of each 4 KiB page. An RL rollout
copies each prompt's prefilled cache to its n rows: at `micro`, 32 prompts by 8 samples (256 rows, a 25 MB float32
cache), that copy faulted about 6,500 times a rollout, and with the kept block the rollout took 0.88-0.95 of the
time (0.86-0.91 at `tiny`; in-process A/B, 10 pairs). vLLM likewise keeps its KV cache for the engine's life.
Here one block, grown to the largest cache taken, stays between rollouts until `release`.

It also keeps the buffers of the weights packed for oneDNN (`packs`, `kernels.pack`): a rollout copies its
model's weights into the last rollout's buffers, 30-40 µs a weight at `micro`, where packing each afresh takes
100-220 µs (17 weights a `micro` rollout, 33 at `tiny`). They hold a copy of the weights of each model sampled
from, until that model is freed or `release`.

One cache at a time holds the block: `lend` gives it to the code inside the `with` (or None where it is lent
already, e.g. a nested rollout), and that code takes it at most once (`take`; a second take gets fresh memory).
A cache taken from it must not outlive the `with`: the sampler's cache lives inside `sample` only. The same holds
for the packs: they are the lent code's, and the next lend's code writes them over.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class CacheMemory:
    """One block of CPU memory and the buffers of packed weights, lent to one rollout at a time (see the module
    docstring)."""

    def __init__(self) -> None:
        self._block: torch.Tensor | None = None  # uint8, on the CPU
        self._lent = False
        self._taken = False
        self._lock = threading.Lock()
        self.packs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (its layout key, buffer)

    @contextmanager
    def lend(self) -> Iterator[CacheMemory | None]:
        """This memory for the `with` body, or None where another body holds it."""
        with self._lock:
            free, self._lent, self._taken = not self._lent, True, False
        try:
            yield self if free else None
        finally:
            if free:
                self._lent = False

    def take(self, nbytes: int) -> torch.Tensor:
        """nbytes of CPU memory, uint8 [nbytes]: the block (grown to nbytes where smaller) the first time in a
        `lend`, fresh memory after that. Its contents are whatever the last rollout left. The block is allocated
        under the caller's grad mode: the sampler's `torch.inference_mode()`, so it is written under it only."""
        if not self._lent or self._taken:
            return torch.empty(nbytes, dtype=torch.uint8)
        self._taken = True
        if self._block is None or self._block.numel() < nbytes:
            self._block = None  # the old block freed before the new one is allocated
            self._block = torch.empty(nbytes, dtype=torch.uint8)
        return self._block[:nbytes]

    @property
    def nbytes(self) -> int:
        """The bytes held between rollouts."""
        return 0 if self._block is None else self._block.numel()

    def release(self) -> None:
        """Hand the block and the packs back to the allocator (the next rollout allocates them again)."""
        self._block = None
        self.packs.clear()
