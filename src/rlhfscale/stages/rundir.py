"""A run directory: ``config.yaml`` (fully resolved), ``metrics.jsonl`` and ``summary.json``.

Every logged line carries ``step`` and ``wall_s`` (seconds since the run
started). Files are written whole (summary via an atomic rename), so a killed
run never leaves a half-written summary.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..config import dump_config
from . import tracking
from .tracking import Tracker


STUDY_ENV = "RLHFSCALE_STUDY"  # set by the study engine around each stage call


def in_study() -> bool:
    """Whether this stage runs inside a study (whose runner prints one line per stage)."""
    return os.environ.get(STUDY_ENV) == "1"


def show_progress() -> bool:
    """Rich progress bars only in a terminal and never under CI."""
    return sys.stdout.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunDir:
    """A run directory; every logged number also goes to the trackers `stages.tracking` names (opened on the
    first logged line, so a folder that only gets a summary gets no tracker files)."""

    def __init__(self, path: str | Path, config: BaseModel | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        self.rows: list[dict[str, Any]] = []  # every logged line, for a checkpoint to carry
        self._metrics = (self.path / "metrics.jsonl").open("a")
        self._config = config.model_dump(mode="json") if config is not None else {}
        self._trackers: list[Tracker] | None = None
        tracking.chosen()  # an unknown tracker name is bad input before any work
        if config is not None:
            dump_config(config, self.path / "config.yaml")

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.start

    def log(self, step: int, **metrics: Any) -> dict[str, Any]:
        """Append one JSON line with `step`, `wall_s` and the given metrics."""
        row = {"step": step, "wall_s": round(self.wall_s, 3), **{k: _clean(v) for k, v in metrics.items()}}
        self._write(row)
        return row

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite the lines a checkpointed run had logged (its metrics.jsonl starts over on resume)."""
        self._metrics.seek(0)
        self._metrics.truncate()
        self.rows = []
        for row in rows:
            self._write(row)

    def _write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._trackers is None:
            self._trackers = tracking.open_trackers(self.path, self._config)
        numbers = {k: float(v) for k, v in row.items() if k not in ("step", "wall_s") and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        for tracker in self._trackers:
            tracker.log(int(row["step"]), numbers)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write `summary.json` atomically (flat keys such as ``eval/pass@1``)."""
        final = self.path / "summary.json"
        tmp = final.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({k: _clean(v) for k, v in summary.items()}, indent=2) + "\n")
        os.replace(tmp, final)
        return final

    def close(self) -> None:
        self._metrics.close()
        for tracker in self._trackers or []:
            tracker.close()


class Progress:
    """A rich progress bar in a terminal; otherwise a plain line about every 10% of the work."""

    def __init__(self, total: int, description: str):
        self.total, self.description, self.done = max(total, 1), description, 0
        self._bar = None
        if show_progress() and not in_study():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self._task = self._bar.add_task(description, total=self.total, info="")
            self._bar.start()

    def advance(self, info: str = "") -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, info=info)
        elif not in_study() and (self.done == self.total or self.done % max(1, self.total // 10) == 0):
            print(f"{self.description} {self.done}/{self.total} {info}".rstrip(), flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
