"""The artifact store: `root/<stage>/<key>/` folders plus an SQLite index of trials, stages and metrics.

A stage runs in `root/<stage>/.partial-<key>/` (where a long stage keeps its `checkpoint/`, so a
killed attempt resumes), and its artifact is made visible by one atomic `os.rename` of the complete
folder, so a visible artifact is always complete. Before the rename the folder gets `meta.json`:
the stage's returned metrics, the settings it read, its input keys, the code version that made it
and a manifest (size and sha256 of every file), checked whenever the artifact is reused.

The artifacts are the truth. The index (`root/index.sqlite`, WAL mode) is a cache of them plus
the run bookkeeping (running / failed / blocked, attempts): deleted or damaged, it is rebuilt
from the artifacts' `meta.json`. It is written in short transactions, retried while another
process holds the write lock. One study run at a time holds `root/.lock` (an flock, released by
the kernel even when the run is killed); while it is held, tmp folders and "running" rows belong
to that run, and when it is free they are leftovers of a dead one.
"""

from __future__ import annotations

import fcntl
import hashlib
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

META = "meta.json"
CHECKPOINT = "checkpoint"
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


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Relative path -> {"size", "sha256"} of every file under `folder` but `meta.json`."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != META)
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_digest(p)} for p in files}


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Write `meta` plus the folder's manifest as `meta.json`, flushed to disk (the artifact's last file)."""
    text = json.dumps({**meta, "files": manifest(folder)}, indent=1, sort_keys=True)
    with open(folder / META, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def check_artifact(folder: Path) -> str | None:
    """None when `folder` holds a readable meta.json whose manifest matches its files; else what is wrong."""
    try:
        meta = json.loads((folder / META).read_text())
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{META}: expected a readable metadata file with a manifest, found it missing or damaged"
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name}: expected a file of {want['size']} bytes, found none"
        if path.stat().st_size != want["size"]:
            return f"{name}: expected {want['size']} bytes, found {path.stat().st_size}"
        if file_digest(path) != want["sha256"]:
            return f"{name}: expected sha256 {want['sha256'][:12]}..., found {file_digest(path)[:12]}..."
    return None


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
        self.healed: str | None = None  # set once a damaged index was rebuilt: the one line to show

    # -- artifacts ---------------------------------------------------------------------------

    def artifact_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def has_artifact(self, stage: str, key: str) -> bool:
        return self.artifact_dir(stage, key).is_dir()

    def read_meta(self, stage: str, key: str) -> dict[str, Any]:
        """An artifact's meta.json ({} when unreadable: `verify` says why)."""
        try:
            return json.loads((self.artifact_dir(stage, key) / META).read_text())
        except (OSError, ValueError):
            return {}

    def verify(self, stage: str, key: str) -> str | None:
        """None when the artifact is intact, else one line saying what is wrong with it."""
        problem = check_artifact(self.artifact_dir(stage, key))
        return None if problem is None else f"{self.artifact_dir(stage, key)}/{problem}"

    def set_aside(self, stage: str, key: str, why: str) -> Path:
        """Move an artifact out of the way (to `.<why>-<key>-<uuid>`, kept for inspection); returns where."""
        aside = self.root / stage / f".{why}-{key}-{uuid.uuid4().hex[:8]}"
        os.rename(self.artifact_dir(stage, key), aside)
        return aside

    def partial_dir(self, stage: str, key: str) -> Path:
        """Where a stage at `key` runs: kept across a kill for its `checkpoint/`, emptied of anything else."""
        partial = self.root / stage / f".partial-{key}"
        partial.mkdir(parents=True, exist_ok=True)
        for child in partial.iterdir():
            if child.name != CHECKPOINT:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        return partial

    def error_log(self, stage: str, key: str) -> Path:
        """Where the full traceback of a failed stage goes."""
        return self.root / stage / f"{key}.error.log"

    def new_tmp_dir(self, stage: str, key: str) -> Path:
        tmp = self.root / stage / f".tmp-{key}-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        return tmp

    def remove_stale_tmp(self) -> int:
        """Delete tmp folders and replaced artifacts left by a dead run (call only while holding the run lock)."""
        stale = list(self.root.glob("*/.tmp-*")) + list(self.root.glob("*/.replaced-*"))
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    def artifact_metrics(self, stage: str, key: str) -> dict[str, float]:
        """The metrics the stage returned, from its artifact's meta.json."""
        return dict(self.read_meta(stage, key).get("metrics", {}))

    def read_curve(self, stage: str, key: str) -> list[dict[str, Any]]:
        """The eval points of an artifact's `curve.jsonl` (empty when there is none); a damaged line is bad input."""
        path = self.artifact_dir(stage, key) / "curve.jsonl"
        if not path.is_file():
            return []
        points = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                point = json.loads(line)
            except ValueError:
                point = None
            if not isinstance(point, dict):
                raise BadInput(f"{path} line {number}: expected a JSON object, found {line[:40]!r}")
            points.append(point)
        return points

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

    @property
    def index_path(self) -> Path:
        return self.root / "index.sqlite"

    def _begin(self, write: bool) -> sqlite3.Connection:
        """An open connection inside a begun transaction, retried while the database is locked.
        A damaged index is set aside and rebuilt from the artifacts (`healed` says so)."""
        self.root.mkdir(parents=True, exist_ok=True)
        attempt = 0
        while True:
            attempt += 1
            conn = sqlite3.connect(self.index_path, timeout=LOCK_TIMEOUT_S, isolation_level=None)
            try:
                if not self._schema_ready:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.executescript(SCHEMA)
                    conn.execute("SELECT count(*) FROM stages").fetchone()
                    self._schema_ready = True
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                return conn
            except sqlite3.DatabaseError as err:
                conn.close()
                busy = "locked" in str(err) or "busy" in str(err)
                if busy and attempt < LOCK_RETRIES:
                    time.sleep(0.05 * attempt)
                    continue
                if busy or "disk is full" in str(err) or self.healed:
                    raise
                self._heal(str(err))

    def _heal(self, error: str) -> None:
        """Set a damaged index aside and build a new one from the artifacts' meta.json."""
        stamp = uuid.uuid4().hex[:8]
        for suffix in ("", "-wal", "-shm"):
            damaged = Path(f"{self.index_path}{suffix}")
            if damaged.exists():
                os.rename(damaged, f"{self.index_path}.damaged-{stamp}{suffix}")
        self.healed = f"{self.index_path}: damaged ({error}); set aside and rebuilt from the artifacts"
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for artifact in sorted(p for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                meta = self.read_meta(stage_dir.name, artifact.name)
                if meta:
                    self.record_done(stage_dir.name, artifact.name, meta.get("metrics", {}), meta.get("wall_s"))

    def record_done(self, stage: str, key: str, metrics: dict[str, float], wall_s: float | None) -> None:
        """Index a finished artifact found in the store (a row if it has none). It was completed once at least:
        a kill between publishing and indexing leaves a row that counted none."""
        with self._db(write=True) as db:
            db.execute("INSERT OR IGNORE INTO stages (stage, key) VALUES (?, ?)", (stage, key))
        self.mark_done(stage, key, metrics, wall_s, completed=False)

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
        """Record a finished artifact and its metrics; `completed` counts one more completion (an artifact that
        exists counts one at least)."""
        with self._db(write=True) as db:
            db.execute(
                "UPDATE stages SET status = 'done', error = NULL, completions = MAX(completions + ?, 1),"
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
        """(stage, key) -> metrics in the index (a cache of the artifacts' meta.json)."""
        found: dict[tuple[str, str], dict[str, float]] = {}
        with self._db() as db:
            for stage, key, name, value in db.execute("SELECT stage, key, name, value FROM metrics"):
                found.setdefault((stage, key), {})[name] = value
        return found
