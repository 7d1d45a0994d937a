"""Run a study: expand its trials, key their stages, run each missing key once, in dependency order.

Resuming a killed study is running it again: visible artifacts are complete (atomic rename), are
checked against their manifest and reused; a damaged one is set aside and re-run, and a stage
killed mid-way resumes from its checkpoint. Artifacts made by another code version are reported
as stale and re-run only when asked (`rerun_stale`). Before anything runs, each stage's `check`
refuses settings that would do nothing, and a stage on a CUDA device must ask for a GPU. A failing
stage records a one-line error, blocks its dependents and lets independent stages go on.
`study_status` and `collect_metrics` read the store without running anything; metrics come from
the artifacts themselves, the index being only a cache of them.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rlhfscale.study.executors import Executor, StageCall, StageOutcome, make_executor, one_line
from rlhfscale.study.keys import Node, Pipeline, disabled_reason, get_dotted
from rlhfscale.study.plan import NodeId, Plan, artifact_state, id_of, input_ids, make_plan
from rlhfscale.study.spec import Trial, Validate
from rlhfscale.study.store import Store
from rlhfscale.version import code_version, describe


@dataclass
class StudyResult:
    """What one `run_study` call did."""

    study: str
    store: Path
    trials: list[Trial]
    ran: list[NodeId] = field(default_factory=list)  # stage keys completed by this call
    skipped: int = 0  # stage keys whose artifact already existed
    failed: dict[NodeId, str] = field(default_factory=dict)  # -> one-line error
    blocked: dict[NodeId, str] = field(default_factory=dict)  # -> which input failed
    stale: list[NodeId] = field(default_factory=list)  # artifacts made by another code version
    damaged: dict[NodeId, str] = field(default_factory=dict)  # artifacts that failed their manifest: set aside, re-run
    notes: list[str] = field(default_factory=list)  # one-line warnings and repairs, in order

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


@dataclass(frozen=True)
class StatusRow:
    trial: str
    stage: str
    key: str  # empty for a skipped stage
    status: str  # pending | running | done | failed | blocked | skipped
    reason: str  # the error of a failed stage, the failed input of a blocked one, ...


@dataclass
class StudyStatus:
    rows: list[StatusRow]
    counts: dict[str, int]  # status -> number of rows


def _record_found(store: Store, nodes: list[Node], result: StudyResult, rerun_stale: bool) -> list[Node]:
    """The nodes still to run. Damaged artifacts are set aside (and re-run); stale ones re-run when asked;
    intact artifacts the index lacks (a kill between publishing and indexing, a lost index) get indexed."""
    rows = store.stage_rows()
    todo: list[Node] = []
    for node in nodes:
        node_id = id_of(node)
        state, why = artifact_state(store, node_id, code_version())
        if state == "damaged":
            store.set_aside(*node_id, "damaged")
            result.damaged[node_id] = why
            result.notes.append(f"damaged artifact {why}; set aside, running it again")
        elif state == "stale":
            result.stale.append(node_id)
        if state in ("missing", "damaged") or (state == "stale" and rerun_stale):
            todo.append(node)
        elif rows.get(node_id, {}).get("status") != "done":
            meta = store.read_meta(*node_id)
            store.record_done(*node_id, meta.get("metrics", {}), meta.get("wall_s"))
    if store.healed:
        result.notes.append(store.healed)
    return todo


class _Reporter:
    """Stage progress: a rich bar on a terminal, plain lines otherwise (or when CI=true), or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.count = total, 0
        self.plain = enabled and not (sys.stdout.isatty() and os.environ.get("CI", "").lower() != "true")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self._bar = Progress(*columns, disable=self.plain or not enabled)
        self._task = self._bar.add_task("study", total=total)

    @contextmanager
    def shown(self) -> Iterator[_Reporter]:
        with self._bar:
            yield self

    def started(self, node: Node) -> None:
        self._bar.update(self._task, description=f"{node.stage.name} {node.key}")

    def finished(self, outcome: StageOutcome) -> None:
        what = f"done in {outcome.wall_s:.1f}s" if outcome.ok else f"FAILED: {outcome.error}"
        self._line(f"{outcome.stage} {outcome.key} {what}")

    def blocked(self, node_id: NodeId, reason: str) -> None:
        self._line(f"{node_id[0]} {node_id[1]} blocked: {reason}")

    def _line(self, text: str) -> None:
        self.count += 1
        self._bar.advance(self._task)
        if self.plain:
            print(f"[{self.count}/{self.total}] {text}", flush=True)


def _outcome(future: Future[StageOutcome], node: Node, store: Store) -> StageOutcome:
    """The future's outcome, or a failure if the worker itself died (traceback to the error log)."""
    try:
        return future.result()
    except Exception as err:
        stage, key = id_of(node)
        store.error_log(stage, key).write_text("".join(traceback.format_exception(err)))
        return StageOutcome(stage, key, ok=False, wall_s=0.0, error=one_line(err))


def _block_dependents(failed: NodeId, pending: dict[NodeId, Node], store: Store, result: StudyResult,
                      reporter: _Reporter) -> None:
    """Mark every pending node downstream of `failed` as blocked."""
    frontier = [failed]
    while frontier:
        upstream = frontier.pop()
        for node_id, node in list(pending.items()):
            if upstream in input_ids(node):
                reason = f"input {upstream[0]} {upstream[1]} {'failed' if upstream == failed else 'blocked'}"
                store.mark_ended(*node_id, "blocked", reason)
                result.blocked[node_id] = reason
                reporter.blocked(node_id, reason)
                del pending[node_id]
                frontier.append(node_id)


def _submit_ready(pending: dict[NodeId, Node], running: dict[Future, Node], executor: Executor,
                  store: Store, reporter: _Reporter) -> None:
    unfinished = set(pending) | {id_of(node) for node in running.values()}
    for node_id, node in list(pending.items()):
        if executor.capacity is not None and len(running) >= executor.capacity:
            return
        if any(input_id in unfinished for input_id in input_ids(node)):
            continue
        inputs = {stage: str(store.artifact_dir(stage, key)) for stage, key in input_ids(node)}
        meta = {"code": code_version(), "version": node.stage.version, "inputs": node.input_keys}
        call = StageCall(node.stage.name, node.key, node.stage.fn, node.config, inputs, str(store.root),
                         threads=node.stage.threads, meta=meta, replace=store.has_artifact(*node_id))
        store.mark_running(*node_id)
        reporter.started(node)
        del pending[node_id]
        running[executor.submit(call, dict(node.stage.resources))] = node


def _execute(todo: list[Node], store: Store, executor: Executor, reporter: _Reporter, result: StudyResult) -> None:
    """Run `todo` as their inputs finish, as many at once as the executor takes."""
    pending = {id_of(node): node for node in todo}
    running: dict[Future, Node] = {}
    while pending or running:
        _submit_ready(pending, running, executor, store, reporter)
        finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for future in finished:
            node = running.pop(future)
            node_id, outcome = id_of(node), _outcome(future, node, store)
            reporter.finished(outcome)
            if outcome.ok:
                store.mark_done(*node_id, outcome.metrics, outcome.wall_s, completed=outcome.published)
                result.ran.append(node_id)
            else:
                store.mark_ended(*node_id, "failed", outcome.error or "", outcome.wall_s)
                result.failed[node_id] = outcome.error or ""
                _block_dependents(node_id, pending, store, result, reporter)


def _local_gpu_check(plan: Plan, executor: str, max_workers: int | None) -> None:
    """The local executor cannot share GPUs between stages: a GPU request needs max_workers 1 (or ray)."""
    gpu_stages = sorted({n.stage.name for n in plan.nodes if n.stage.resources.get("num_gpus", 0) > 0})
    if executor == "local" and gpu_stages and max_workers != 1:
        raise plan.spec.error(("resources", gpu_stages[0]), f"resources.{gpu_stages[0]}.num_gpus",
                              "executor ray, or max_workers 1 (the local executor does not share out GPUs)",
                              f"executor local with max_workers {max_workers or 'unset'}")


def run_study(spec_path: str | Path, *, validate: Validate | None, pipeline: Pipeline, executor: str | None = None,
              address: str | None = None, max_workers: int | None = None, progress: bool = True,
              store: str | Path | None = None, rerun_stale: bool = False) -> StudyResult:
    """Run every stage key of the study that has no intact artifact yet; a finished study runs nothing.

    `executor` ('local' | 'ray') and `max_workers` override the spec's; `address` joins a Ray
    cluster; `store` overrides the spec's store directory; `rerun_stale` re-runs artifacts made by
    another code version. Failures do not raise: they are in the result (and the store's index).
    """
    plan = make_plan(spec_path, validate, pipeline, store)
    executor, max_workers = executor or plan.spec.executor, max_workers or plan.spec.max_workers
    _local_gpu_check(plan, executor, max_workers)
    store, result = plan.store, StudyResult(plan.spec.name, plan.store.root, plan.trials)
    result.notes += plan.warnings
    with store.run_lock():
        store.remove_stale_tmp()
        store.reset_running()
        store.record_trials(plan.spec.name, [(t.id, t.config, k) for t, k in zip(plan.trials, plan.keys)])
        todo = _record_found(store, plan.nodes, result, rerun_stale)
        result.skipped = len(plan.nodes) - len(todo)
        if not todo:
            return result
        pool = make_executor(executor, address=address, max_workers=max_workers)
        try:
            with _Reporter(len(todo), progress).shown() as reporter:
                _execute(todo, store, pool, reporter, result)
        finally:
            pool.close()
    return result


@dataclass(frozen=True)
class PlannedStage:
    stage: str
    key: str
    trials: list[str]  # the trials that share this stage run
    resources: dict[str, float]
    state: str  # missing | done | stale | damaged


def plan_study(spec_path: str | Path, *, validate: Validate | None, pipeline: Pipeline,
               store: str | Path | None = None) -> tuple[list[PlannedStage], list[str]]:
    """A dry run: every unique stage run of the study (validated, checked, keyed), with the state of its artifact,
    and the checks' warnings. Nothing is run or written."""
    plan = make_plan(spec_path, validate, pipeline, store)
    trials: dict[NodeId, list[str]] = {}
    for trial, keys in zip(plan.trials, plan.keys):
        for node_id in keys.items():
            trials.setdefault(node_id, []).append(trial.id)
    code = code_version()
    stages = [PlannedStage(n.stage.name, n.key, trials[id_of(n)], dict(n.stage.resources),
                           artifact_state(plan.store, id_of(n), code)[0]) for n in plan.nodes]
    return stages, plan.warnings


def _skip_reason(trial: Trial, pipeline: Pipeline, stage_name: str) -> str:
    stage = next(s for s in pipeline if s.name == stage_name)
    if why := disabled_reason(stage, trial.config):
        return f"disabled ({why})"
    return "an input stage is skipped"


def study_status(spec_path: str | Path, *, validate: Validate | None, pipeline: Pipeline,
                 store: str | Path | None = None) -> StudyStatus:
    """One row per trial and pipeline stage, and the number of rows per status."""
    plan = make_plan(spec_path, validate, pipeline, store)
    rows_by_id = plan.store.stage_rows() if plan.store.index_path.exists() else {}
    live, code, states = plan.store.run_active(), code_version(), {}
    rows: list[StatusRow] = []
    for trial, keys in zip(plan.trials, plan.keys):
        for stage in (s for s in pipeline if s.enabled is not False):
            if stage.name not in keys:
                rows.append(StatusRow(trial.id, stage.name, "", "skipped", _skip_reason(trial, pipeline, stage.name)))
                continue
            key = keys[stage.name]
            row = rows_by_id.get((stage.name, key), {})
            status, reason = row.get("status", "pending"), row.get("error") or ""
            if (stage.name, key) not in states:
                states[stage.name, key] = artifact_state(plan.store, (stage.name, key), code)
            state, why = states[stage.name, key]
            if state != "missing":
                status, reason = state, why
            elif status == "running" and not live:
                status, reason = "pending", "interrupted run"
            elif status == "done":
                status, reason = "pending", "artifact missing"
            rows.append(StatusRow(trial.id, stage.name, key, status, reason))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return StudyStatus(rows, counts)


def code_versions(spec_path: str | Path, *, validate: Validate | None, pipeline: Pipeline,
                  store: str | Path | None = None) -> dict[str, int]:
    """How many of the study's artifacts each code version made (`version.describe` -> count)."""
    plan = make_plan(spec_path, validate, pipeline, store)
    counts: dict[str, int] = {}
    for node_id in map(id_of, plan.nodes):
        if plan.store.has_artifact(*node_id):
            made_by = describe(plan.store.read_meta(*node_id).get("code", {}))
            counts[made_by] = counts.get(made_by, 0) + 1
    return counts


def axis_value(trial: Trial, dotted: str) -> Any:
    """The trial's value on an axis: its override, else its resolved config's value (None where it has none)."""
    if dotted in trial.overrides:
        return trial.overrides[dotted]
    try:
        return get_dotted(trial.config, dotted)
    except KeyError:
        return None


def collect_metrics(spec_path: str | Path, *, validate: Validate | None, pipeline: Pipeline,
                    curves: bool = False, store: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per trial: id, seed, axis values (dotted keys) and every finished stage's metrics.

    The axes are the dotted keys any trial overrides; every trial's row holds its resolved value of each
    (a trial that leaves a key at the base value still sits on that axis, at the base value).

    With `curves`, one row per trial and point of each stage's `curve.jsonl` instead, the point's
    values (with its `step`) over the trial's metrics and a `curve` key naming the stage.
    """
    plan = make_plan(spec_path, validate, pipeline, store)
    metrics = {node_id: plan.store.artifact_metrics(*node_id) for node_id in map(id_of, plan.nodes)}
    axes = list(dict.fromkeys(k for trial in plan.trials for k in trial.overrides))
    table: list[dict[str, Any]] = []
    for trial, keys in zip(plan.trials, plan.keys):
        row: dict[str, Any] = {"trial": trial.id, "seed": trial.seed}
        row |= {k: axis_value(trial, k) for k in axes}
        for stage, key in keys.items():
            row.update(metrics.get((stage, key), {}))
        if not curves:
            table.append(row)
            continue
        for stage, key in keys.items():
            table.extend({**row, "curve": stage, **point} for point in plan.store.read_curve(stage, key))
    return table
