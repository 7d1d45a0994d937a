"""Run a study: expand its trials, key their stages, run each missing key once, in dependency order.

Resuming a killed study is running it again: visible artifacts are complete (atomic rename) and
are skipped, everything else is redone. A failing stage records a one-line error, blocks its
dependents and lets independent stages go on. `study_status` and `collect_metrics` read the
store without running anything.
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

from rlhfscale.errors import BadInput
from rlhfscale.study.executors import Executor, StageCall, StageOutcome, make_executor, one_line
from rlhfscale.study.keys import Node, Pipeline, get_dotted, plan_nodes
from rlhfscale.study.spec import StudySpec, Trial, Validate, expand, load_spec
from rlhfscale.study.store import Store

NodeId = tuple[str, str]  # (stage, key)


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


@dataclass(frozen=True)
class _Plan:
    spec: StudySpec
    trials: list[Trial]
    keys: list[dict[str, str]]  # per trial: stage -> key
    nodes: list[Node]  # unique stage keys, topological order
    store: Store


def _plan(spec_path: str | Path, validate: Validate | None, pipeline: Pipeline,
          store: str | Path | None = None) -> _Plan:
    """Expand and key the study; `store` overrides the spec's store directory."""
    spec = load_spec(spec_path)
    trials = expand(spec, validate)
    try:
        keys, nodes = plan_nodes([trial.config for trial in trials], pipeline)
    except KeyError as err:
        raise BadInput(f"{spec.path}: expected every config key the pipeline reads, found {err.args[0]}") from None
    return _Plan(spec, trials, keys, nodes, Store(store or spec.store_root))


def _node_id(node: Node) -> NodeId:
    return (node.stage.name, node.key)


def _input_ids(node: Node) -> list[NodeId]:
    return list(node.input_keys.items())


def _record_found(store: Store, nodes: list[Node]) -> tuple[list[Node], int]:
    """The nodes still to run; artifacts a killed run published but never indexed get indexed now."""
    rows = store.stage_rows()
    todo: list[Node] = []
    for node in nodes:
        stage, key = _node_id(node)
        if not store.has_artifact(stage, key):
            todo.append(node)
        elif rows.get((stage, key), {}).get("status") != "done":
            store.mark_done(stage, key, store.read_summary(stage, key), None, completed=True)
    return todo, len(nodes) - len(todo)


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
        stage, key = _node_id(node)
        store.error_log(stage, key).write_text("".join(traceback.format_exception(err)))
        return StageOutcome(stage, key, ok=False, wall_s=0.0, error=one_line(err))


def _block_dependents(failed: NodeId, pending: dict[NodeId, Node], store: Store, result: StudyResult,
                      reporter: _Reporter) -> None:
    """Mark every pending node downstream of `failed` as blocked."""
    frontier = [failed]
    while frontier:
        upstream = frontier.pop()
        for node_id, node in list(pending.items()):
            if upstream in _input_ids(node):
                reason = f"input {upstream[0]} {upstream[1]} {'failed' if upstream == failed else 'blocked'}"
                store.mark_ended(*node_id, "blocked", reason)
                result.blocked[node_id] = reason
                reporter.blocked(node_id, reason)
                del pending[node_id]
                frontier.append(node_id)


def _submit_ready(pending: dict[NodeId, Node], running: dict[Future, Node], executor: Executor,
                  store: Store, reporter: _Reporter) -> None:
    unfinished = set(pending) | {_node_id(node) for node in running.values()}
    for node_id, node in list(pending.items()):
        if executor.capacity is not None and len(running) >= executor.capacity:
            return
        if any(input_id in unfinished for input_id in _input_ids(node)):
            continue
        inputs = {stage: str(store.artifact_dir(stage, key)) for stage, key in _input_ids(node)}
        call = StageCall(node.stage.name, node.key, node.stage.fn, node.config, inputs, str(store.root))
        store.mark_running(*node_id)
        reporter.started(node)
        del pending[node_id]
        running[executor.submit(call, dict(node.stage.resources))] = node


def _execute(todo: list[Node], store: Store, executor: Executor, reporter: _Reporter, result: StudyResult) -> None:
    """Run `todo` as their inputs finish, as many at once as the executor takes."""
    pending = {_node_id(node): node for node in todo}
    running: dict[Future, Node] = {}
    while pending or running:
        _submit_ready(pending, running, executor, store, reporter)
        finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for future in finished:
            node = running.pop(future)
            outcome = _outcome(future, node, store)
            reporter.finished(outcome)
            if outcome.ok:
                store.mark_done(*_node_id(node), outcome.metrics, outcome.wall_s, completed=outcome.published)
                result.ran.append(_node_id(node))
            else:
                store.mark_ended(*_node_id(node), "failed", outcome.error or "", outcome.wall_s)
                result.failed[_node_id(node)] = outcome.error or ""
                _block_dependents(_node_id(node), pending, store, result, reporter)


def run_study(spec_path: str | Path, *, validate: Validate | None, pipeline: Pipeline, executor: str | None = None,
              address: str | None = None, max_workers: int | None = None, progress: bool = True,
              store: str | Path | None = None) -> StudyResult:
    """Run every stage key of the study that has no artifact yet; a finished study runs nothing.

    `executor` ('local' | 'ray') and `max_workers` override the spec's; `address` joins a Ray
    cluster; `store` overrides the spec's store directory. Failures do not raise: they are in
    the result (and the store's index).
    """
    plan = _plan(spec_path, validate, pipeline, store)
    store, result = plan.store, StudyResult(plan.spec.name, plan.store.root, plan.trials)
    with store.run_lock():
        store.remove_stale_tmp()
        store.reset_running()
        store.record_trials(plan.spec.name, [(t.id, t.config, k) for t, k in zip(plan.trials, plan.keys)])
        todo, result.skipped = _record_found(store, plan.nodes)
        if not todo:
            return result
        pool = make_executor(executor or plan.spec.executor, address=address,
                             max_workers=max_workers or plan.spec.max_workers)
        try:
            with _Reporter(len(todo), progress).shown() as reporter:
                _execute(todo, store, pool, reporter, result)
        finally:
            pool.close()
    return result


def _skip_reason(trial: Trial, pipeline: Pipeline, stage_name: str) -> str:
    stage = next(s for s in pipeline if s.name == stage_name)
    if stage.enabled is not None and not get_dotted(trial.config, stage.enabled):
        return f"disabled ({stage.enabled} is false)"
    return "an input stage is skipped"


def study_status(spec_path: str | Path, *, validate: Validate | None, pipeline: Pipeline,
                 store: str | Path | None = None) -> StudyStatus:
    """One row per trial and pipeline stage, and the number of rows per status."""
    plan = _plan(spec_path, validate, pipeline, store)
    rows_by_id = plan.store.stage_rows() if (plan.store.root / "index.sqlite").exists() else {}
    live = plan.store.run_active()
    rows: list[StatusRow] = []
    for trial, keys in zip(plan.trials, plan.keys):
        for stage in pipeline:
            if stage.name not in keys:
                rows.append(StatusRow(trial.id, stage.name, "", "skipped", _skip_reason(trial, pipeline, stage.name)))
                continue
            key = keys[stage.name]
            row = rows_by_id.get((stage.name, key), {})
            status, reason = row.get("status", "pending"), row.get("error") or ""
            if plan.store.has_artifact(stage.name, key):
                status, reason = "done", ""
            elif status == "running" and not live:
                status, reason = "pending", "interrupted run"
            elif status == "done":
                status, reason = "pending", "artifact missing"
            rows.append(StatusRow(trial.id, stage.name, key, status, reason))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return StudyStatus(rows, counts)


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
    plan = _plan(spec_path, validate, pipeline, store)
    metrics = plan.store.metrics() if (plan.store.root / "index.sqlite").exists() else {}
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
