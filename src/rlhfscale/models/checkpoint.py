"""Training state saved every k steps, so a stage killed mid-way resumes where it stopped.

One file, ``<folder>/state.pt``, replaced atomically (written beside, then renamed): a kill at any
instant leaves the previous complete state or the new one. The state carries a fingerprint of the
settings that produced it; a state with another fingerprint is ignored (the run starts over), so
a folder reused with other settings cannot resume into the wrong run. What goes in the state is
the caller's: model and optimizer state dicts, RNG states, controllers, counters, logged rows.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch


class Checkpointer:
    """Saves and loads one training state under `folder` every `every` steps (never when `every` is 0)."""

    def __init__(self, folder: str | Path | None, every: int, fingerprint: str) -> None:
        self.path = Path(folder) / "state.pt" if folder is not None else None
        self.every, self.fingerprint = every, fingerprint

    def due(self, step: int, last: int) -> bool:
        """Whether to save after `step` (not after the last one: the finished run is the artifact)."""
        return self.path is not None and self.every > 0 and step % self.every == 0 and step < last

    def save(self, step: int, state: dict[str, Any]) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".pt.tmp")
        torch.save({"step": step, "fingerprint": self.fingerprint, **state}, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none or it belongs to other settings."""
        if self.path is None or not self.path.is_file():
            return None
        state = torch.load(self.path, weights_only=True, map_location="cpu")
        return state if state.get("fingerprint") == self.fingerprint else None


def rng_state(rng: random.Random, *generators: torch.Generator) -> dict[str, Any]:
    """Python, torch-global and the given torch generators' states."""
    return {"python": rng.getstate(), "torch": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}


def set_rng_state(state: dict[str, Any], rng: random.Random, *generators: torch.Generator) -> None:
    rng.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    for g, s in zip(generators, state["generators"]):
        g.set_state(s)
