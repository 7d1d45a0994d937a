"""Stage `sample`: k responses to each of P training prompts (and to held-out prompts) for RM data.

P = ``data.prompts`` (prompt diversity) and k = ``data.responses_per_prompt`` (responses per
prompt) are the study's two RM-data axes. Responses come from the policy (input ``sft``: a run
directory or a policy folder) or, for the chat task with ``data.source=corrupt``, from the gold
solutions corrupted at a uniformly random level each (`tasks.chat.corrupt`), with no policy at all.
Writes ``train.jsonl`` and ``heldout.jsonl`` (format in `rm.data`).
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import BaseModel

from ..contract import view
from ..errors import BadInput
from ..models.ladder import count_non_embedding
from ..rm.data import count_tokens, sampled_row, write_jsonl
from ..rollout.evaluate import generate
from ..pipeline import STAGES
from ..tasks import Example, Task, score_all
from ..tasks.chat import corrupt
from .common import input_policy, max_new_tokens, setup
from .rundir import RunDir

Splits = dict[str, list[Example]]


def respond(cfg: BaseModel, task: Task, inputs: dict[str, str], splits: Splits) -> tuple[dict, float]:
    """k responses to every example of every split, and the FLOPs spent generating them."""
    k = cfg.data.responses_per_prompt
    if cfg.data.source == "corrupt":
        rng = random.Random(cfg.seed)
        return {s: [[corrupt(e, rng.random(), rng) for _ in range(k)] for e in ex] for s, ex in splits.items()}, 0.0
    policy, tok = input_policy(cfg, inputs["sft"])
    sc, budget = cfg.sampling, max_new_tokens(cfg, task)
    responses = {split: generate(policy, tok, [e.prompt for e in ex], n=k, temperature=sc.temperature, top_p=sc.top_p,
                                 top_k=sc.top_k, max_new_tokens=budget, seed=cfg.seed + i) if ex else []
                 for i, (split, ex) in enumerate(splits.items())}
    generated = count_tokens(tok, (r for rows in responses.values() for rs in rows for r in rs))
    return responses, 2.0 * count_non_embedding(policy) * generated


def run(cfg: BaseModel, inputs: dict[str, str], out_dir: str | Path) -> dict[str, float]:
    cfg = view(STAGES["sample"], cfg)
    task = setup(cfg)
    if cfg.data.source == "corrupt" and task.name != "chat":
        raise BadInput(f"data.source: expected 'policy' for the {task.name} task, found 'corrupt'")
    if cfg.data.source != "corrupt" and "sft" not in inputs:
        raise BadInput("sample: expected the policy that samples the RM's data (an sft run directory or policy "
                       "folder, or an rm_base run with data.source=rm_base), found none")
    out = RunDir(out_dir, cfg)
    splits = {"train": task.examples("train", cfg.data.prompts),
              "heldout": task.examples("test", cfg.data.heldout_prompts) if cfg.data.heldout_prompts else []}
    responses, flops = respond(cfg, task, inputs, splits)
    summary: dict[str, float] = {"sample/prompts": len(splits["train"]),
                                 "sample/responses": len(splits["train"]) * cfg.data.responses_per_prompt}
    for split, examples in splits.items():
        write_jsonl(out.path / f"{split}.jsonl", map(sampled_row, examples, responses[split]))
        scores = score_all(task, [e for e, rs in zip(examples, responses[split]) for _ in rs],
                           [r for rs in responses[split] for r in rs])
        if scores:
            summary[f"sample/{split}_score"] = sum(scores) / len(scores)
    summary |= {"flops/sample": flops, "wall_s": out.wall_s}
    out.log(0, **summary)
    out.write_summary(summary)
    out.close()
    return summary
