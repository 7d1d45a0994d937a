"""The `rlhfscale` command line: one thin function per command.

Every command takes ``--config FILE`` and ``key=value`` overrides and writes a
run directory under ``--out``. Bad input prints one line and exits 2 (a
traceback only with ``--debug``); anything else that fails exits 1.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import sys
from contextlib import contextmanager
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


def _run_config(config: Optional[Path], overrides: Optional[list[str]], defaults: Optional[dict] = None) -> RunConfig:
    return load_config(RunConfig, config, overrides or [], defaults)


# `rlhfscale demo` beneath the user's config: bf16 autocast for the RL stage (its curve is the fp32 one,
# tests/test_rl_e2e.py) buys the 20 extra steps that fit the two-minute budget
DEMO_DEFAULTS = {"rl": {"bf16": True, "steps": 70}}


@contextmanager
def _nonfinite_exits_1():
    """A training run stopped by a NaN or inf: one line naming step and quantity, exit 1 (traceback with --debug)."""
    from .rl.trainer import NonFiniteError

    try:
        yield
    except NonFiniteError as e:
        if "--debug" in sys.argv:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None


def _threads(cfg: RunConfig) -> None:
    """A command's stages run with ``threads`` CPU threads (0: all cores)."""
    if cfg.threads:
        os.environ["RLHFSCALE_THREADS"] = str(cfg.threads)


def _run(cfg: RunConfig, targets: list[str], out: Path, **kwargs) -> dict[str, dict[str, float]]:
    """Run `targets` of the pipeline graph (with `pinned` inputs and the rest as `run_targets` takes)."""
    from .pipeline import GRAPH
    from .study.targets import run_targets

    _threads(cfg)
    with _nonfinite_exits_1():
        return run_targets(GRAPH, cfg.model_dump(mode="json"), targets, out, **kwargs)


def _run_dir(path: Path, marker: str, what: str) -> str:
    """`path` as a stage input, if it holds `marker`; else bad input."""
    if not (path / marker).is_file():
        raise BadInput(f"{path}: expected {what} with {marker}, found none")
    return str(path)


def _sft_input(sft_dir: Optional[Path]) -> dict[str, str]:
    return {"sft": _run_dir(sft_dir, "policy/config.json", "an sft run directory")} if sft_dir else {}


SFT_DIR = typer.Option(None, "--sft", help="sft run directory to start from (default: run SFT first)")


@app.command()
def sft(overrides: Optional[list[str]] = OVERRIDES, config: Optional[Path] = CONFIG,
        out: Optional[Path] = typer.Option(None, help="run directory (default runs/sft)")) -> None:
    """Supervised fine-tuning on the task's gold solutions."""
    typer.echo(json.dumps(_run(_run_config(config, overrides), ["sft"], _out(out, "sft"))["sft"]))


@app.command()
def rl(overrides: Optional[list[str]] = OVERRIDES, config: Optional[Path] = CONFIG, sft_dir: Optional[Path] = SFT_DIR,
       rm_dir: Optional[Path] = typer.Option(None, "--rm", help="run directory of a `train-rm` run (its rm/ folder)"),
       out: Optional[Path] = typer.Option(None, help="run directory (default runs/rl)")) -> None:
    """Policy optimization (GRPO, Dr. GRPO, RLOO, REINFORCE++, PPO) from an SFT run."""
    pinned = _sft_input(sft_dir)
    if rm_dir is not None:
        pinned["rm"] = _run_dir(rm_dir, "rm/config.json", "a reward-model run directory")
    typer.echo(json.dumps(_run(_run_config(config, overrides), ["rl"], _out(out, "rl"), pinned=pinned)["rl"]))


@app.command("eval")
def eval_(overrides: Optional[list[str]] = OVERRIDES, config: Optional[Path] = CONFIG,
          policy: Path = typer.Option(..., help="HF checkpoint folder of the policy (or a run directory)"),
          out: Optional[Path] = typer.Option(None, help="run directory (default runs/eval)")) -> None:
    """Held-out pass@1, pass@k and maj@k of a policy checkpoint."""
    marker = "policy/config.json" if (policy / "policy").is_dir() else "config.json"
    pinned = {"rl": _run_dir(policy, marker, "a Hugging Face model folder")}
    typer.echo(json.dumps(_run(_run_config(config, overrides), ["eval"], _out(out, "eval"), pinned=pinned)["eval"]))


@app.command()
def demo(overrides: Optional[list[str]] = OVERRIDES, config: Optional[Path] = CONFIG,
         out: Optional[Path] = typer.Option(None, help="run directory (default runs/demo)")) -> None:
    """SFT a small model to a weak start, then GRPO; print a before/after table."""
    cfg = _run_config(config, overrides, DEMO_DEFAULTS)
    from .stages import demo as stage

    _threads(cfg)
    with _nonfinite_exits_1():
        stage.run(cfg, _out(out, "demo"))


@app.command("train-rm")
def train_rm(overrides: Optional[list[str]] = OVERRIDES, config: Optional[Path] = CONFIG,
             sft_dir: Optional[Path] = typer.Option(
                 None, "--sft", help="sft run directory: samples and completes responses, and starts the RM"),
             data: Optional[Path] = typer.Option(None, help="label run directory to train on (skips sample and label)"),
             pairs: Optional[Path] = typer.Option(None, help="preference pairs (jsonl: prompt, chosen, rejected)"),
             outcomes: Optional[Path] = typer.Option(None, help="labelled responses (jsonl: prompt, response, label)"),
             steps: Optional[Path] = typer.Option(None, help="step-labelled responses (jsonl: prompt, steps, labels)"),
             heldout_pairs: Optional[Path] = typer.Option(None, help="held-out preference pairs (jsonl)"),
             heldout_steps: Optional[Path] = typer.Option(None, help="held-out gold step labels (jsonl)"),
             out: Optional[Path] = typer.Option(None, help="run directory (default runs/rm)")) -> None:
    """Train an ORM, PRM or multi-task RM (rm.kind): sample -> label -> rm, or on given data."""
    cfg = _run_config(config, overrides)
    pinned = _sft_input(sft_dir)
    if sft_dir:
        pinned["rm_base"] = pinned["sft"]  # the RM starts from the SFT policy (rm.init decides)
    files = {"pairs": pairs, "outcomes": outcomes, "steps": steps, "heldout_pairs": heldout_pairs,
             "heldout_steps": heldout_steps}
    extra = {name: str(path) for name, path in files.items() if path is not None}
    if data is not None:
        pinned["label"] = _run_dir(data, "outcomes.jsonl", "a label run directory")
    targets = ["rm"] if data is not None or extra else ["label", "rm"]
    result = _run(cfg, targets, _out(out, "rm"), pinned=pinned, extra_inputs=extra, root_stage="rm")
    typer.echo(json.dumps(result["rm"]))


@app.command("label-steps")
def label_steps(overrides: Optional[list[str]] = OVERRIDES, config: Optional[Path] = CONFIG,
                sft_dir: Optional[Path] = SFT_DIR,
                samples: Optional[Path] = typer.Option(None, help="sample run directory to label (default: sample now)"),
                out: Optional[Path] = typer.Option(None, help="run directory (default runs/label)")) -> None:
    """Monte-Carlo step labels (Math-Shepherd), with outcome, pair and gold step labels beside them."""
    cfg = _run_config(config, overrides)
    if sft_dir is None:
        raise BadInput("label-steps: expected a policy to complete step prefixes (--sft), found none")
    pinned = _sft_input(sft_dir)
    if samples is not None:
        pinned["sample"] = _run_dir(samples, "train.jsonl", "a sample run directory")
    result = _run(cfg, ["label"], _out(out, "label"), pinned=pinned)
    typer.echo(json.dumps(result["label"]))


@app.command()
def bon(overrides: Optional[list[str]] = OVERRIDES, config: Optional[Path] = CONFIG, sft_dir: Optional[Path] = SFT_DIR,
        policy: Optional[Path] = typer.Option(None, help="policy folder (instead of --sft)"),
        rm: list[Path] = typer.Option([], "--rm", help="reward-model run directory or folder; repeat for ORM and PRM"),
        out: Optional[Path] = typer.Option(None, help="run directory (default runs/bon)")) -> None:
    """Best-of-N curves (ORM, PRM under each aggregation, majority vote, oracle) on one pool of samples."""
    pinned = _sft_input(sft_dir)
    if policy is not None:
        pinned["sft"] = _run_dir(policy, "config.json", "a policy folder")
    rms = {f"rm{i}" if i else "rm": _run_dir(path, "rm/config.json" if (path / "rm").is_dir() else "config.json",
                                             "a reward-model run directory or folder") for i, path in enumerate(rm)}
    pinned |= {"rm": rms.pop("rm")} if "rm" in rms else {}
    result = _run(_run_config(config, overrides), ["bon"], _out(out, "bon"), pinned=pinned, extra_inputs=rms)
    typer.echo(json.dumps(result["bon"]))


SPEC = typer.Argument(..., help="study spec (YAML)")
STUDY_OUT = typer.Option(None, "--out", help="study directory: store/ and report/ (default runs/<spec name>)")


@study_app.command("run")
def study_run(spec: Path = SPEC, out: Optional[Path] = STUDY_OUT,
              executor: Optional[str] = typer.Option(None, help="local | ray (default: the spec's)"),
              address: Optional[str] = typer.Option(None, help="Ray cluster address to join"),
              max_workers: Optional[int] = typer.Option(None, help="stages run at once"),
              rerun_stale: bool = typer.Option(False, "--rerun-stale",
                                               help="re-run the artifacts another code version made"),
              dry_run: bool = typer.Option(False, "--dry-run", help="validate, check and key every trial and stage; "
                                           "list the stage runs to do; run nothing")) -> None:
    """Run every stage of the study that is not done yet, then write the report."""
    from .study import commands

    if dry_run:
        commands.dry_run(spec, _out(out, spec.stem))
        return

    try:
        ok = commands.run(spec, _out(out, spec.stem), executor=executor, address=address, max_workers=max_workers,
                          rerun_stale=rerun_stale)
    except KeyboardInterrupt:
        print(f"interrupted: finished stages are kept; run `rlhfscale study run {spec}` again to resume",
              file=sys.stderr)
        raise typer.Exit(130) from None
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
                  backend: str = typer.Option("native", help="native (our KV-cache sampler) or vllm"),
                  threads: int = typer.Option(0, help="torch CPU threads for the run (0: leave as set)"),
                  repeats: int = typer.Option(5, help="timed calls per side; the best and the median are compared"),
                  device: str = typer.Option("cpu", help="torch device of both sides (cpu, cuda, cuda:1, ...)"),
                  dtype: str = typer.Option("float32", help="the model's dtype on both sides: float32 or bfloat16"),
                  as_json: bool = typer.Option(False, "--json", help="print only the JSON line")) -> None:
    """A rollout backend against `model.generate` on the same model and prompts."""
    from .bench.rollout import run_rollout_bench

    result = run_rollout_bench(size=size, batch=batch, new_tokens=new_tokens, backend=backend,
                               threads=threads or None, repeats=repeats, device=device, dtype=dtype)
    if not as_json:
        for k, v in result.items():
            typer.echo(f"{k:>14s}  {v}")
    typer.echo(json.dumps(result))


@bench_app.command("rl")
def bench_rl(vs: str = typer.Option("trl", "--vs", help="what to compare against (trl)"),
             sizes: str = typer.Option("micro,tiny", help="ladder sizes, comma-separated; the first is reported at top level"),
             prompts: int = 16, n: int = 8,
             new_tokens: int = typer.Option(0, help="max new tokens (0: 16 for micro, 32 for tiny)"),
             steps: int = typer.Option(5, help="timed steps per side per round"),
             rounds: int = typer.Option(2, help="alternating rounds; each side keeps its best"),
             bf16: bool = typer.Option(True, help="bf16 autocast on our side (its learning curve is fp32's)"),
             trl_bf16: bool = typer.Option(True, "--trl-bf16/--no-trl-bf16", help="bf16 autocast on TRL's side (TRL's default)"),
             threads: int = typer.Option(0, help="torch CPU threads for both sides (0: leave as set)"),
             as_json: bool = typer.Option(False, "--json", help="print only the JSON line")) -> None:
    """Our GRPO step against TRL's GRPOTrainer on the same model, task and batch (needs the `bench` extra)."""
    if vs != "trl":
        raise BadInput(f"bench rl --vs: expected 'trl', found {vs!r}")
    from .bench.rl import run_rl_bench

    result = run_rl_bench(tuple(s for s in sizes.split(",") if s), prompts=prompts, n=n, new_tokens=new_tokens,
                          steps=steps, rounds=rounds, bf16=bf16, trl_bf16=trl_bf16,
                          threads=threads or None)
    if not as_json:
        for k, v in result.items():
            typer.echo(f"{k:>22s}  {v}")
    typer.echo(json.dumps(result))


@bench_app.command("rm")
def bench_rm(out: Optional[Path] = typer.Option(None, help="where the runs go (default: a temporary directory)"),
             as_json: bool = typer.Option(False, "--json", help="print only the JSON line")) -> None:
    """The arithmetic RM figures in one run: ORM pair accuracy, PRM step F1, Best-of-16 against pass@1."""
    from .bench.rm import run_rm_bench

    result = run_rm_bench(out)
    if not as_json:
        for k, v in result.items():
            typer.echo(f"{k:>16s}  {v}")
    typer.echo(json.dumps(result))


def main() -> None:
    from transformers.utils import logging as hf_logging

    from .host_memory import keep_freed_memory

    keep_freed_memory()
    hf_logging.disable_progress_bar()  # our stages draw their own progress; stderr keeps errors readable
    debug = "--debug" in sys.argv
    argv = [a for a in sys.argv[1:] if a != "--debug"]
    try:
        app(args=argv, prog_name="rlhfscale")  # usage errors exit 2 inside
    except BadInput as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (OSError, sqlite3.OperationalError) as e:
        if debug or not _disk_full(e):
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}no space left on device; nothing half-written was left in place", file=sys.stderr)
        sys.exit(1)


def _disk_full(err: BaseException) -> bool:
    return getattr(err, "errno", None) == errno.ENOSPC or "disk is full" in str(err)


if __name__ == "__main__":
    main()
