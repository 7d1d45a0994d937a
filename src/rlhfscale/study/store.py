"""The artifact store: `root/<stage>/<key>/` folders plus an SQLite index of trials, stages and metrics.

An artifact is written into `root/<stage>/.tmp-<key>-<uuid>/` and made visible by one atomic
`os.rename` of the complete folder, so a visible artifact is always complete. The index
(`root/index.sqlite`, WAL mode) is written in short transactions, retried while another
process holds the write lock. One study run at a time holds `root/.lock` (an flock, released
by the kernel even when the run is killed); while it is held, tmp folders and "running" rows
belong to that run, and when it is free they are leftovers of a dead one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlhfscale.errors import BadInput

LOCK_RETRIES = 20  # attempts of one transaction while the database is locked
LOCK_TIMEOUT_S = 5.0  # SQLite's own busy wait per attempt

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    study TEXT NOT NULL, id TEXT NOT NULL, config TEXT NOT NULL, PRIMARY KEY (study, id));
CREATE TABLE IF NOT EXISTS trial_stages (
    study TEXT NOT NULL, trial TEXT NOT NULL, stage TEXT NOT NULL, key TEXT NOT NULL,
    PRIMARY KEY (study, trial, stage));
CREATE TABLE IF NOT EXISTS stages (
    stage TEXT NOT NULL, key TEXT NOT NULL, error TEXT,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed', 'blocked')),
    attempts INTEGER NOT NULL DEFAULT 0, completions INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL, wall_s REAL, PRIMARY KEY (stage, key));
CREATE TABLE IF NOT EXISTS metrics (
    stage TEXT NOT NULL, key TEXT NOT NULL, name TEXT NOT NULL, value REAL,
    PRIMARY KEY (stage, key, name));
"""


def publish(tmp: Path, final: Path) -> bool:
    """Atomically rename a complete tmp folder to its final name; False (tmp removed) if it exists."""
    try:
        os.rename(tmp, final)
        return True
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False


class Store:
    """Artifacts and their index under one root folder. Creating one touches no file."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._schema_ready = False

    # -- artifacts ---------------------------------------------------------------------------

    def artifact_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def has_artifact(self, stage: str, key: str) -> bool:
        return self.artifact_dir(stage, key).is_dir()

    def error_log(self, stage: str, key: str) -> Path:
        """Where the full traceback of a failed stage goes."""
        return self.root / stage / f"{key}.error.log"

    def new_tmp_dir(self, stage: str, key: str) -> Path:
        tmp = self.root / stage / f".tmp-{key}-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        return tmp

    def remove_stale_tmp(self) -> int:
        """Delete tmp folders left by a dead run (call only while holding the run lock)."""
        stale = list(self.root.glob("*/.tmp-*"))
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    def read_summary(self, stage: str, key: str) -> dict[str, float]:
        path = self.artifact_dir(stage, key) / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def read_curve(self, stage: str, key: str) -> list[dict[str, Any]]:
        """The eval points of an artifact's `curve.jsonl` (empty when there is none)."""
        path = self.artifact_dir(stage, key) / "curve.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # -- run lock ----------------------------------------------------------------------------

    @contextmanager
    def run_lock(self) -> Iterator[None]:
        """Hold the store's run lock; BadInput if another live run holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BadInput(f"{self.root}: expected a free store, found another study run using it") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def run_active(self) -> bool:
        """Whether a live study run holds the lock right now."""
        if not (self.root / ".lock").exists():
            return False
        with open(self.root / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    # -- index -------------------------------------------------------------------------------

    def _begin(self, write: bool) -> sqlite3.Connection:
        """An open connection inside a begun transaction, retried while the database is locked."""
        self.root.mkdir(parents=True, exist_ok=True)
        attempt = 0
        while True:
            attempt += 1
            conn = sqlite3.connect(self.root / "index.sqlite", timeout=LOCK_TIMEOUT_S, isolation_level=None)
            try:
                if not self._schema_ready:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.executescript(SCHEMA)
                    self._schema_ready = True
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                return conn
            except sqlite3.OperationalError as err:
                conn.close()
                if not ("locked" in str(err) or "busy" in str(err)) or attempt >= LOCK_RETRIES:
                    raise
                time.sleep(0.05 * attempt)

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One short transaction: committed when the block ends, rolled back if it raises."""
        conn = self._begin(write)
        try:
            yield conn
            conn.execute("COMMIT")
        finally:
            conn.close()

    def record_trials(self, study: str, trials: list[tuple[str, dict[str, Any], dict[str, str]]]) -> None:
        """Replace the study's (trial id, config, stage -> key) rows; add a pending row per new stage key."""
        with self._db(write=True) as db:
            db.execute("DELETE FROM trials WHERE study = ?", (study,))
            db.execute("DELETE FROM trial_stages WHERE study = ?", (study,))
            for trial, config, keys in trials:
                db.execute("INSERT INTO trials VALUES (?, ?, ?)", (study, trial, json.dumps(config)))
                for stage, key in keys.items():
                    db.execute("INSERT INTO trial_stages VALUES (?, ?, ?, ?)", (study, trial, stage, key))
                    db.execute("INSERT OR IGNORE INTO stages (stage, key) VALUES (?, ?)", (stage, key))

    def stage_rows(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(stage, key) -> its row of the `stages` table."""
        with self._db() as db:
            db.row_factory = sqlite3.Row
            return {(row["stage"], row["key"]): dict(row) for row in db.execute("SELECT * FROM stages")}

    def mark_running(self, stage: str, key: str) -> None:
        with self._db(write=True) as db:
            db.execute(
                "UPDATE stages SET status = 'running', error = NULL, attempts = attempts + 1, started = ?,"
                " finished = NULL, wall_s = NULL WHERE stage = ? AND key = ?",
                (time.time(), stage, key),
            )

    def mark_done(self, stage: str, key: str, metrics: dict[str, float], wall_s: float | None, completed: bool) -> None:
        """Record a finished artifact and its metrics; `completed` counts one more completion."""
        with self._db(write=True) as db:
            db.execute(
                "UPDATE stages SET status = 'done', error = NULL, completions = completions + ?,"
                " finished = ?, wall_s = ? WHERE stage = ? AND key = ?",
                (int(completed), time.time(), wall_s, stage, key),
            )
            db.execute("DELETE FROM metrics WHERE stage = ? AND key = ?", (stage, key))
            db.executemany(
                "INSERT INTO metrics VALUES (?, ?, ?, ?)", [(stage, key, n, v) for n, v in metrics.items()]
            )

    def mark_ended(self, stage: str, key: str, status: str, error: str, wall_s: float | None = None) -> None:
        """Record a stage as failed or blocked, with a one-line reason."""
        with self._db(write=True) as db:
            db.execute(
                "UPDATE stages SET status = ?, error = ?, finished = ?, wall_s = ? WHERE stage = ? AND key = ?",
                (status, error, time.time(), wall_s, stage, key),
            )

    def reset_running(self) -> None:
        """Rows a dead run left 'running' become 'pending' (call only while holding the run lock)."""
        with self._db(write=True) as db:
            db.execute("UPDATE stages SET status = 'pending' WHERE status = 'running'")

    def metrics(self) -> dict[tuple[str, str], dict[str, float]]:
        """(stage, key) -> metrics, as the stages returned them."""
        found: dict[tuple[str, str], dict[str, float]] = {}
        with self._db() as db:
            for stage, key, name, value in db.execute("SELECT stage, key, name, value FROM metrics"):
                found.setdefault((stage, key), {})[name] = value
        return found
