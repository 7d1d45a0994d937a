"""Run some stages of the pipeline graph in this process, with some inputs pinned: what the CLI
commands, `rlhfscale demo` and the benchmarks do instead of wiring stages by hand.

`run_targets` runs the targets and every required input they need that is not pinned (a pinned
input is a folder the user gave, e.g. `rl --sft runs/sft`), in graph order, each with exactly the
settings it reads. Every stage's `check` runs before anything is written. The output is built in a
hidden folder beside `out` and renamed into place only when every stage has finished, so a failed
or killed command (a full disk included) leaves no half-written output that a later command
could trust, and an earlier output at `out` stays as it was until the new one is complete. The one
exception is a run that stops itself with an error marked `keep_output` (RL on a NaN reward): its
folder, holding the last good policy and the log naming the step, is published before the error.
Torch-free: the stage functions are imported by path when they run.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhfscale.errors import BadInput
from rlhfscale.study.executors import flat_metrics, finish_artifact, resolve
from rlhfscale.study.keys import Pipeline, StageDef, project
from rlhfscale.study.store import META, check_artifact
from rlhfscale.version import code_version


def needed_stages(graph: Pipeline, targets: list[str], pinned: dict[str, str]) -> list[StageDef]:
    """The targets and, recursively, the required inputs that are not pinned, in graph order."""
    by_name = {stage.name: stage for stage in graph}
    unknown = [t for t in targets if t not in by_name]
    if unknown:
        raise KeyError(f"unknown stage {unknown[0]!r}; valid: {', '.join(by_name)}")
    needed: set[str] = set()
    frontier = list(targets)
    while frontier:
        name = frontier.pop()
        if name in needed or (name in pinned and name not in targets):
            continue
        needed.add(name)
        frontier += by_name[name].inputs
    return [stage for stage in graph if stage.name in needed]


def check_stages(stages: list[StageDef], config: dict[str, Any]) -> list[str]:
    """Each stage's check on the settings it reads: refusals raise BadInput, warnings are returned."""
    warnings: list[str] = []
    for stage in stages:
        if stage.check:
            warnings += [w for w in resolve(stage.check)(project(config, stage.reads)) if w not in warnings]
    return warnings


def publish_replacing(tmp: Path, out: Path) -> None:
    """Rename the complete `tmp` to `out`; an existing `out` is replaced only once `tmp` is in place."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def run_targets(
    graph: Pipeline, config: dict[str, Any], targets: list[str], out: str | Path, *,
    pinned: dict[str, str] | None = None, extra_inputs: dict[str, str] | None = None,
    root_stage: str | None = None, finish: Callable[[Path, dict[str, dict[str, float]]], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Run `targets` into `out`; returns each stage's metrics.

    `root_stage` writes into `out` itself, every other stage into `out/<stage>` (default: the only
    target, if there is one). `extra_inputs` go to the target stages besides their graph inputs
    (data files, more reward models). `finish(folder, metrics)` adds files before `out` appears.
    """
    pinned, extra_inputs = dict(pinned or {}), dict(extra_inputs or {})
    for name, path in pinned.items():
        if not Path(path).exists():
            raise BadInput(f"{path}: expected the {name} input, found no such file or folder")
        if (Path(path) / META).is_file() and (problem := check_artifact(Path(path))):
            raise BadInput(f"{path}/{problem} (a damaged {name} output; run it again)")
    stages = needed_stages(graph, targets, pinned)
    for warning in check_stages(stages, config):
        print(f"warning: {warning}", file=sys.stderr)
    root_stage = root_stage if root_stage is not None else (targets[0] if len(targets) == 1 else None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    results: dict[str, dict[str, float]] = {}
    try:
        paths = dict(pinned)
        for stage in stages:
            folder = tmp if stage.name == root_stage else tmp / stage.name
            folder.mkdir(parents=True, exist_ok=True)
            inputs = {n: paths[n] for n in stage.inputs + stage.optional_inputs if n in paths}
            inputs |= extra_inputs if stage.name in targets else {}
            start, settings = time.perf_counter(), project(config, stage.reads)
            metrics = flat_metrics(stage.name, resolve(stage.fn)(settings, inputs, str(folder)))
            meta = {"stage": stage.name, "version": stage.version, "code": code_version(), "config": settings,
                    "inputs": inputs}
            finish_artifact(folder, metrics, meta, time.perf_counter() - start)
            paths[stage.name], results[stage.name] = str(folder), metrics
        if finish is not None:
            finish(tmp, results)
        publish_replacing(tmp, out)
    except BaseException as err:
        if getattr(err, "keep_output", False):  # a run stopped on purpose (a NaN): its last good state is the output
            publish_replacing(tmp, out)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return results
