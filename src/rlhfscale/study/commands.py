"""What `rlhfscale study run|status|report` do: the engine, the pipeline and the analysis wired together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rlhfscale import __version__
from rlhfscale.pipeline import GRAPH as PIPELINE
from rlhfscale.study.runner import code_versions, collect_metrics, plan_study, run_study, study_status

FLOPS_PARTS = ("flops/sft", "flops/sample", "flops/label", "flops/rm", "flops/rl")


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """A trial config, validated and fully resolved by the pipeline's `RunConfig`."""
    from rlhfscale.config import RunConfig
    from rlhfscale.errors import BadInput

    resolved = RunConfig.model_validate(config).model_dump(mode="json")
    if resolved["threads"]:
        raise BadInput(f"threads={resolved['threads']}: does nothing in a study: each stage runs with the threads "
                       "of its resources.<stage>.num_cpus (default 1), so its numbers do not depend on the machine")
    return resolved


def run(spec: Path, out: Path, *, executor: str | None, address: str | None, max_workers: int | None,
        rerun_stale: bool = False) -> bool:
    result = run_study(spec, validate=validate, pipeline=PIPELINE, executor=executor, address=address,
                       max_workers=max_workers, store=out / "store", rerun_stale=rerun_stale)
    console = Console()
    for note in result.notes:
        print(f"note: {note}", flush=True)  # one line each, whatever the terminal's width
    console.print(f"study {result.study}: {len(result.ran)} stages ran, {result.skipped} already done, "
                  f"{len(result.failed)} failed, {len(result.blocked)} blocked")
    if result.stale and not rerun_stale:
        console.print(f"{len(result.stale)} artifacts were made by another code version (`study status` lists "
                      "them); `study run --rerun-stale` re-runs them")
    for (stage, key), error in result.failed.items():
        console.print(f"  failed {stage} {key}: {error}")
    console.print(f"report: {report(spec, out)}")
    return result.ok


def dry_run(spec: Path, out: Path) -> None:
    """Print every stage run the study would need (and which are done), without running or writing anything."""
    stages, warnings = plan_study(spec, validate=validate, pipeline=PIPELINE, store=out / "store")
    for warning in warnings:
        print(f"note: {warning}")
    table = Table(title=f"{spec}: {sum(s.state != 'done' for s in stages)} of {len(stages)} stage runs to do")
    for col in ("stage", "key", "state", "resources", "trials"):
        table.add_column(col)
    for s in stages:
        resources = ", ".join(f"{k}={v:g}" for k, v in s.resources.items())
        table.add_row(s.stage, s.key, s.state, resources, f"{len(s.trials)}: {s.trials[0]}" + (" ..." if len(s.trials) > 1 else ""))
    Console(width=200).print(table)


def status(spec: Path, out: Path) -> None:
    st = study_status(spec, validate=validate, pipeline=PIPELINE, store=out / "store")
    if st.counts.get("stale"):
        Console().print(f"this study mixes code versions: {st.counts['stale']} stage runs were made by another "
                        "code version; `study run --rerun-stale` re-runs them")
    table = Table(title=f"{spec}: " + ", ".join(f"{n} {s}" for s, n in sorted(st.counts.items())))
    for col in ("trial", "stage", "key", "status", "reason"):
        table.add_column(col)
    for row in st.rows:
        table.add_row(row.trial, row.stage, row.key, row.status, row.reason)
    Console(width=200).print(table)


def analysis_rows(spec: Path, out: Path) -> list[dict[str, Any]]:
    """Final rows and RL-curve rows of every trial, with `flops/total` filled in."""
    final = collect_metrics(spec, validate=validate, pipeline=PIPELINE, store=out / "store")
    curves = collect_metrics(spec, validate=validate, pipeline=PIPELINE, store=out / "store", curves=True)
    rows = []
    for row in curves + [r for r in final if r["trial"] not in {c["trial"] for c in curves}]:
        parts = [row[k] for k in FLOPS_PARTS if isinstance(row.get(k), (int, float))]
        rows.append({**row, "flops/total": sum(parts)} if parts and "flops/total" not in row else row)
    return rows


def report(spec: Path, out: Path) -> Path:
    from rlhfscale.analysis.report import write_report

    rows = analysis_rows(spec, out)
    versions = code_versions(spec, validate=validate, pipeline=PIPELINE, store=out / "store")
    notes = [f"this study mixes artifacts of {len(versions)} code versions ("
             + "; ".join(f"{n} by {v}" for v, n in versions.items())
             + "); `rlhfscale study run --rerun-stale` re-runs those another version made"] if len(versions) > 1 else []
    return write_report(rows, out / "report", spec_text=Path(spec).read_text(), version=__version__,
                        title=f"rlhfscale study: {Path(spec).stem}", notes=notes)
