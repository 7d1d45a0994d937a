"""Stage `sft`: supervised fine-tuning of a fresh (or given) policy on the task's gold solutions.

Checkpoints every ``sft.checkpoint_every`` steps under ``<out>/checkpoint``; a run started in a
folder holding a checkpoint of the same settings resumes from it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from ..contract import view
from ..models.io import save_policy
from ..models.ladder import count_non_embedding
from ..models.train import encode_pairs, sft_loop
from ..rollout.evaluate import evaluate
from ..pipeline import STAGES
from ..tasks import verifiable
from .common import checkpointer, fresh_policy, max_new_tokens, setup
from .rundir import Progress, RunDir


def run(cfg: BaseModel, inputs: dict[str, str], out_dir: str | Path) -> dict[str, float]:
    cfg = view(STAGES["sft"], cfg)
    task = setup(cfg)
    model, tok = fresh_policy(cfg)
    out = RunDir(out_dir, cfg)
    ckpt = checkpointer(cfg, out_dir, cfg.sft.checkpoint_every)
    if (state := ckpt.load()) is not None:
        out.restore(state["extra"]["rows"])
        out.log(state["step"], resumed_from=state["step"])
    examples = task.examples("train", cfg.sft.n_examples)
    pairs = encode_pairs(tok, [e.prompt for e in examples], [e.solution for e in examples])
    tokens_per_seq = sum(len(p) + len(r) for p, r in pairs) / len(pairs)

    with Progress(cfg.sft.steps, "sft") as bar:
        def on_step(step: int, loss: float, lr: float) -> None:
            if step % 10 == 0 or step == cfg.sft.steps:
                out.log(step, **{"sft/loss": loss, "sft/lr": lr})
            bar.advance(f"loss {loss:.3f}")

        losses = sft_loop(model, pairs, steps=cfg.sft.steps, batch_size=cfg.sft.batch_size, lr=cfg.sft.lr,
                          warmup=cfg.sft.warmup, weight_decay=cfg.sft.weight_decay, pad_id=tok.pad_token_id,
                          seed=cfg.seed, schedule=cfg.sft.schedule, on_step=on_step, checkpoint=ckpt,
                          extra_state=lambda: {"rows": out.rows})
    save_policy(model, tok, out.path / "policy")
    test = task.examples("test", cfg.eval.n_prompts)
    # a task without a verifier (prefs) has no held-out pass@1
    metrics = evaluate(model, tok, task, test, max_new_tokens=max_new_tokens(cfg, task)) if verifiable(task) else {}
    n_params = count_non_embedding(model)
    summary = {
        "sft/loss": losses[-1] if losses else float("nan"),
        **metrics,
        "policy/params": n_params,
        "flops/sft": 6 * n_params * tokens_per_seq * cfg.sft.batch_size * cfg.sft.steps,
        "wall_s": out.wall_s,
    }
    out.write_summary(summary)
    out.close()
    return summary
