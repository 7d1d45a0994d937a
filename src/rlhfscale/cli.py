"""The `rlhfscale` command line: one thin function per command.

Every command takes ``--config FILE`` and ``key=value`` overrides and writes a
run directory under ``--out``. Bad input prints one line and exits 2 (a
traceback only with ``--debug``); anything else that fails exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .config import RunConfig, load_config
from .errors import BadInput

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run RLHF and measure how it scales.")
bench_app = typer.Typer(no_args_is_help=True, help="Side-by-side speed benchmarks (print JSON on the last line).")
app.add_typer(bench_app, name="bench")
study_app = typer.Typer(no_args_is_help=True, help="Run a grid of pipeline trials and report on the paper's findings.")
app.add_typer(study_app, name="study")

CONFIG = typer.Option(None, "--config", "-c", help="YAML config file")
OVERRIDES = typer.Argument(None, help="key=value overrides with dotted keys, e.g. rl.lr=1e-3")


def _out(out: Optional[Path], default: str) -> Path:
    return out if out is not None else Path("runs") / default


def _run_config(config: Optional[Path], overrides: Optional[list[str]]) -> RunConfig:
    return load_config(RunConfig, config, overrides or [])


@app.command()
def sft(overrides: Optional[list[str]] = OVERRIDES, config: Optional[Path] = CONFIG,
        out: Optional[Path] = typer.Option(None, help="run directory (default runs/sft)")) -> None:
    """Supervised fine-tuning on the task's gold solutions."""
    cfg = _run_config(config, overrides)
    from .stages import sft as stage

    summary = stage.run(cfg, {}, _out(out, "sft"))
    typer.echo(json.dumps(summary))


@app.command()
def rl(overrides: Optional[list[str]] = OVERRIDES, config: Optional[Path] = CONFIG,
       sft_dir: Optional[Path] = typer.Option(None, "--sft", help="run directory of an `sft` run to start from"),
       out: Optional[Path] = typer.Option(None, help="run directory (default runs/rl)")) -> None:
    """Policy optimization (GRPO, RLOO, REINFORCE++, PPO) from an SFT run or a checkpoint."""
    cfg = _run_config(config, overrides)
    inputs = {}
    if sft_dir is not None:
        if not (sft_dir / "policy" / "config.json").is_file():
            raise BadInput(f"{sft_dir}: expected an sft run directory with policy/config.json, found none")
        inputs["sft"] = str(sft_dir)
    from .stages import rl as stage

    summary = stage.run(cfg, inputs, _out(out, "rl"))
    typer.echo(json.dumps(summary))


@app.command("eval")
def eval_(overrides: Optional[list[str]] = OVERRIDES, config: Optional[Path] = CONFIG,
          policy: Path = typer.Option(..., help="HF checkpoint folder of the policy"),
          out: Optional[Path] = typer.Option(None, help="run directory (default runs/eval)")) -> None:
    """Held-out pass@1, pass@k and maj@k of a policy checkpoint."""
    cfg = _run_config(config, overrides)
    from .stages import eval as stage

    summary = stage.run(cfg, {"policy": str(policy)}, _out(out, "eval"))
    typer.echo(json.dumps(summary))


@app.command()
def demo(overrides: Optional[list[str]] = OVERRIDES, config: Optional[Path] = CONFIG,
         out: Optional[Path] = typer.Option(None, help="run directory (default runs/demo)")) -> None:
    """SFT a small model to a weak start, then GRPO; print a before/after table."""
    cfg = _run_config(config, overrides)
    from .stages import demo as stage

    stage.run(cfg, _out(out, "demo"))


SPEC = typer.Argument(..., help="study spec (YAML)")
STUDY_OUT = typer.Option(None, "--out", help="study directory: store/ and report/ (default runs/<spec name>)")


@study_app.command("run")
def study_run(spec: Path = SPEC, out: Optional[Path] = STUDY_OUT,
              executor: Optional[str] = typer.Option(None, help="local | ray (default: the spec's)"),
              address: Optional[str] = typer.Option(None, help="Ray cluster address to join"),
              max_workers: Optional[int] = typer.Option(None, help="stages run at once")) -> None:
    """Run every stage of the study that is not done yet, then write the report."""
    from .study import commands

    ok = commands.run(spec, _out(out, spec.stem), executor=executor, address=address, max_workers=max_workers)
    raise typer.Exit(0 if ok else 1)


@study_app.command("status")
def study_status(spec: Path = SPEC, out: Optional[Path] = STUDY_OUT) -> None:
    """A table of every trial's stages: done / running / failed / pending, with failure reasons."""
    from .study import commands

    commands.status(spec, _out(out, spec.stem))


@study_app.command("report")
def study_report(spec: Path = SPEC, out: Optional[Path] = STUDY_OUT) -> None:
    """Fit, check the claims and write report/ (index.html, claims.json, metrics.csv, PNGs)."""
    from .study import commands

    typer.echo(f"report: {commands.report(spec, _out(out, spec.stem))}")


@bench_app.command("rollout")
def bench_rollout(size: str = "micro", batch: int = 256, new_tokens: int = 32,
                  as_json: bool = typer.Option(False, "--json", help="print only the JSON line")) -> None:
    """Our KV-cache sampler against `model.generate` on the same model and prompts."""
    from .bench.rollout import run_rollout_bench

    result = run_rollout_bench(size=size, batch=batch, new_tokens=new_tokens)
    if not as_json:
        for k, v in result.items():
            typer.echo(f"{k:>14s}  {v}")
    typer.echo(json.dumps(result))


def main() -> None:
    debug = "--debug" in sys.argv
    argv = [a for a in sys.argv[1:] if a != "--debug"]
    try:
        app(args=argv, prog_name="rlhfscale")  # usage errors exit 2 inside
    except BadInput as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
