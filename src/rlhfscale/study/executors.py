"""Executors: where stage calls run. The stage code cannot tell which one runs it.

- `LocalExecutor`: a spawn-context process pool on this machine. Each stage runs with the threads its
  `num_cpus` asks for (env `RLHFSCALE_THREADS`, `OMP_NUM_THREADS`, `MKL_NUM_THREADS`, read by the
  stage code), whatever `max_workers` is: a thread count changes floating-point sums, so it is
  part of the stage's key, never a consequence of how many stages run beside it. Workers die with the driver (Linux `PR_SET_PDEATHSIG`), so a killed
  study leaves no process that finishes a stage later. It runs up to `max_workers` stages at once
  whatever their resource requests (use `max_workers=1` on a single GPU). With `max_workers=1`
  stages run inside the driver process itself (the thread variables are then set in the driver):
  the simplest to debug (breakpoints work), but a stage that crashes the interpreter takes the
  driver with it.
- `RayExecutor`: the same calls as Ray tasks with the stage's resource request; joins a cluster
  at `address` or starts a small local instance. The store must be on a filesystem every node
  sees. Without `max_workers` every ready stage is submitted at once and Ray queues them by
  resources, so the index's "running" then means "submitted".

Both return `concurrent.futures.Future`s of `StageOutcome`.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rlhfscale.errors import BadInput
from rlhfscale.host_memory import keep_freed_memory
from rlhfscale.study.store import CHECKPOINT, Store, publish, write_meta

THREAD_ENV = ("RLHFSCALE_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
STUDY_ENV = "RLHFSCALE_STUDY"
RAY_OBJECT_STORE_BYTES = 128 * 1024**2  # a local Ray instance's object store (stage results are small)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class StageCall:
    """Everything a worker needs to run one stage at one key; picklable."""

    stage: str
    key: str
    fn: str  # 'module:function'
    config: dict[str, Any]  # the settings the stage reads, and nothing else
    inputs: dict[str, str]  # input stage name -> artifact folder
    store_root: str
    threads: int = 1  # CPU threads the stage runs with (part of its key)
    meta: dict[str, Any] = field(default_factory=dict)  # recorded in meta.json: code version, version, input keys
    replace: bool = False  # an artifact at this key exists (stale) and is replaced once the new one is complete


@dataclass(frozen=True)
class StageOutcome:
    """What came of one stage call."""

    stage: str
    key: str
    ok: bool
    wall_s: float
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # one line: exception type and message
    published: bool = False  # False when the artifact was already there (another run made it)


class Executor(Protocol):
    """Runs stage calls; `capacity` is the most calls in flight at once (None: no limit)."""

    capacity: int | None

    def submit(self, call: StageCall, resources: dict[str, float]) -> Future[StageOutcome]: ...

    def close(self) -> None: ...


def one_line(err: BaseException) -> str:
    """'Type: message' on one line, shortened to MAX_ERROR_CHARS."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def resolve(path: str) -> Any:
    """The object at an import path 'module:name'."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def flat_metrics(stage: str, value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in value.items()
    ):
        raise TypeError(f"stage {stage!r} must return dict[str, float] metrics, returned {value!r:.80}")
    return {name: float(number) for name, number in value.items()}


def set_thread_env(threads: int) -> None:
    """Tell the stage code (and OpenMP/MKL) how many threads this worker may use."""
    os.environ.update({name: str(threads) for name in THREAD_ENV})


@contextmanager
def in_study() -> Iterator[None]:
    """Tell the stage code it runs in a study (env `STUDY_ENV`): it then keeps its progress to itself (the runner
    prints one line per stage) and records a diverged RL run as a data point instead of failing."""
    previous = os.environ.get(STUDY_ENV)
    os.environ[STUDY_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(STUDY_ENV, None)
        else:
            os.environ[STUDY_ENV] = previous


def finish_artifact(folder: Path, metrics: dict[str, float], meta: dict[str, Any], wall_s: float) -> None:
    """Complete a stage's folder: drop its checkpoint, write summary.json (if the stage wrote none) and meta.json."""
    shutil.rmtree(folder / CHECKPOINT, ignore_errors=True)
    summary = folder / "summary.json"
    if not summary.exists():
        summary.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    write_meta(folder, {**meta, "metrics": metrics, "wall_s": wall_s})


def run_stage(call: StageCall) -> StageOutcome:
    """Run one stage in its partial folder (resuming from a checkpoint there), then publish it atomically.

    A raising stage leaves no artifact and no partial folder; its traceback goes to
    `<stage>/<key>.error.log`. A killed one leaves its partial folder for the next attempt. The process
    keeps freed memory for reuse (`host_memory`), wherever it runs: in the driver, a pool worker or on Ray.
    """
    keep_freed_memory()
    set_thread_env(call.threads)
    store = Store(call.store_root)
    start = time.perf_counter()
    partial = None
    try:
        partial = store.partial_dir(call.stage, call.key)
        with in_study():
            metrics = flat_metrics(call.stage, resolve(call.fn)(call.config, call.inputs, str(partial)))
        finish_artifact(partial, metrics, {**call.meta, "stage": call.stage, "key": call.key,
                                           "config": call.config, "threads": call.threads},
                        time.perf_counter() - start)
        if call.replace and store.has_artifact(call.stage, call.key):
            old = store.set_aside(call.stage, call.key, "replaced")
            published = publish(partial, store.artifact_dir(call.stage, call.key))
            shutil.rmtree(old, ignore_errors=True)
        else:
            published = publish(partial, store.artifact_dir(call.stage, call.key))
    except Exception as err:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        try:
            store.error_log(call.stage, call.key).write_text(traceback.format_exc())
        except OSError:
            pass  # a full disk: the one-line error still reaches the driver
        return StageOutcome(call.stage, call.key, ok=False, wall_s=time.perf_counter() - start, error=one_line(err))
    store.error_log(call.stage, call.key).unlink(missing_ok=True)
    return StageOutcome(call.stage, call.key, True, time.perf_counter() - start, metrics, published=published)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _die_with_parent(parent_pid: int) -> None:
    """Pool worker initializer: get SIGKILL when the driver dies (Linux), or exit if it already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


class LocalExecutor:
    """A process pool on this machine (in-process when `max_workers` is 1)."""

    def __init__(self, max_workers: int | None = None) -> None:
        self.capacity = max_workers or available_cores()
        self._pool = self._new_pool() if self.capacity > 1 else None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.capacity,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )

    def submit(self, call: StageCall, resources: dict[str, float]) -> Future[StageOutcome]:
        if self._pool is None:
            future: Future[StageOutcome] = Future()
            future.set_result(run_stage(call))
            return future
        try:
            return self._pool.submit(run_stage, call)
        except BrokenProcessPool:  # a worker died (e.g. out of memory): start a fresh pool
            self._pool = self._new_pool()
            return self._pool.submit(run_stage, call)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Stage calls as Ray tasks, each requesting its stage's resources (num_cpus, num_gpus, ...)."""

    def __init__(self, address: str | None = None, max_workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            message = "executor 'ray': expected the ray package, found it not installed (pip install 'rlhfscale[ray]')"
            raise BadInput(message) from None
        self._ray = ray
        self.capacity = max_workers
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray and address:
            ray.init(address=address, log_to_driver=False)
        elif self._owns_ray:
            ray.init(object_store_memory=RAY_OBJECT_STORE_BYTES, include_dashboard=False, log_to_driver=False)
        self._task = ray.remote(run_stage)

    def submit(self, call: StageCall, resources: dict[str, float]) -> Future[StageOutcome]:
        return self._task.options(**resources).remote(call).future()

    def close(self) -> None:
        if self._owns_ray:
            self._ray.shutdown()


def make_executor(kind: str, *, address: str | None = None, max_workers: int | None = None) -> Executor:
    """'local' or 'ray'; `address` (ray only) joins an existing cluster."""
    if kind == "ray":
        return RayExecutor(address, max_workers)
    return LocalExecutor(max_workers)
