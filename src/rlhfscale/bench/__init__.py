"""Speed measurements: the machine's matmul peak and the rollout sampler against HF `generate`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rlhfscale.errors import BadInput


@contextmanager
def torch_threads(threads: int | None, command: str) -> Iterator[int]:
    """Run the block with torch's CPU thread count set to `threads` (None or 0: as it is), restored after; yields
    the count in effect. A negative count is refused, naming `command`'s --threads option."""
    if threads is not None and threads < 0:
        raise BadInput(f"{command} --threads: expected 0 (leave as set) or a positive count, found {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        yield threads or previous
    finally:
        torch.set_num_threads(previous)
