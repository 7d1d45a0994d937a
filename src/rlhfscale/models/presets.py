"""The size ladder's shapes, importable without torch (the config validates sizes against it).

Sizes are named by their non-embedding parameter count: nano ≈0.1M, micro ≈0.5M, tiny ≈2M,
small ≈8M, base ≈27M, and large ≈0.5B for a GPU (`python -m rlhfscale.models.ladder` prints the exact
numbers).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    heads: int
    ffn: int


LADDER: dict[str, Preset] = {
    "nano": Preset(hidden=64, layers=2, heads=4, ffn=192),
    "micro": Preset(hidden=128, layers=2, heads=4, ffn=512),
    "tiny": Preset(hidden=192, layers=4, heads=6, ffn=640),
    "small": Preset(hidden=256, layers=8, heads=8, ffn=1024),
    "base": Preset(hidden=512, layers=8, heads=8, ffn=1536),
    "large": Preset(hidden=1152, layers=24, heads=18, ffn=4608),  # head dim 64, as vLLM's kernels take it
}


def preset(size: str) -> Preset:
    """Look up a ladder size by name; an unknown name lists the valid ones."""
    if size not in LADDER:
        raise KeyError(f"unknown model size {size!r}; valid sizes: {', '.join(LADDER)}")
    return LADDER[size]
