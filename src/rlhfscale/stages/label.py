"""Stage `label`: reward-model training labels for the responses of a `sample` run.

From the ``sample`` input's train.jsonl it writes (formats in `rm.data` and `tasks.jsonl`):
- ``outcomes.jsonl``: each response with its verifier score as the correctness label;
- ``pairs.jsonl``: responses to the same prompt with different gold scores, rated by simulated
  raters of noise ``data.rater_temperature`` (for arithmetic: correct vs incorrect);
- ``steps_gold.jsonl``: step labels of the task's gold step checker;
- ``steps_mc_hard.jsonl``, ``steps_mc_soft.jsonl``: Monte-Carlo step labels (Math-Shepherd):
  the policy (input ``sft``) completes the response from each step prefix
  ``data.mc_rollouts`` times; hard = any completion reaches the right answer, soft = the fraction.
  Written when there is a policy and ``data.mc_rollouts`` > 0.
From heldout.jsonl: ``heldout_pairs.jsonl`` (gold preferences) and ``heldout_steps.jsonl`` (gold).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pydantic import BaseModel

from ..contract import view
from ..models.ladder import count_non_embedding
from ..rm.data import Sampled, count_tokens, load_sampled, preference_pairs, write_jsonl
from ..pipeline import STAGES
from ..rewards.mc_labels import monte_carlo_step_labels
from ..rollout.evaluate import generate
from ..tasks import Task, score_all
from .common import input_policy, max_new_tokens, setup
from .rundir import RunDir


def mc_step_labels(cfg: BaseModel, task: Task, inputs: dict[str, str],
                   flat: list[tuple]) -> tuple[list, list, float]:
    """Soft and hard Monte-Carlo labels of (example, response, steps) triples, and the FLOPs spent.

    Identical prefixes (common: responses to a prompt share their first steps) are completed once.
    """
    policy, tok = input_policy(cfg, inputs["sft"])
    sc, generated = cfg.sampling, 0

    def complete(prompts: list[str], prefixes: list[str], m: int) -> list[list[str]]:
        nonlocal generated
        unique = list(dict.fromkeys(zip(prompts, prefixes)))
        outs = generate(policy, tok, [p for p, _ in unique], prefixes=[r for _, r in unique], n=m,
                        temperature=sc.temperature, top_p=sc.top_p, top_k=sc.top_k,
                        max_new_tokens=max_new_tokens(cfg, task), seed=cfg.seed)
        generated += count_tokens(tok, (c for row in outs for c in row))
        by_pair = dict(zip(unique, outs))
        return [by_pair[pair] for pair in zip(prompts, prefixes)]

    def is_correct(i: int, response: str) -> bool:
        return task.score(flat[i][0], response) >= 1.0

    joiner = "\n" if cfg.task.step_split == "line" else "\n\n"
    soft, hard = monte_carlo_step_labels([e.prompt for e, _, _ in flat], [s for _, _, s in flat], complete,
                                         is_correct, cfg.data.mc_rollouts, joiner)
    return soft, hard, 2.0 * count_non_embedding(policy) * generated


def step_rows(flat: list[tuple], labels: list[list]) -> list[dict]:
    """Step-label file rows (`tasks.jsonl.load_step_labels` format) of (example, response, steps) triples."""
    return [{"prompt": e.prompt, "steps": steps, "labels": y} for (e, _, steps), y in zip(flat, labels)]


def gold_steps(task: Task, sampled: list[Sampled]) -> tuple[list[tuple], list[list[bool]]]:
    """(example, response, steps) of every response with at least one step, and its gold step labels."""
    flat = [(s.example, r, steps) for s in sampled for r in s.responses if (steps := task.split_steps(r))]
    return flat, [task.step_labels(e, r) for e, r, _ in flat]


def load_split(inputs: dict[str, str], split: str) -> list[Sampled]:
    """The sample run's responses of a split; none for an empty or missing held-out file."""
    path = Path(inputs["sample"]) / f"{split}.jsonl"
    return load_sampled(path) if split == "train" or (path.is_file() and path.stat().st_size) else []


def run(cfg: BaseModel, inputs: dict[str, str], out_dir: str | Path) -> dict[str, float]:
    cfg = view(STAGES["label"], cfg)
    task = setup(cfg)
    train, heldout = load_split(inputs, "train"), load_split(inputs, "heldout")
    out = RunDir(out_dir, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    pairs = preference_pairs(task, train, cfg.data.rater_temperature, gen)
    write_jsonl(out.path / "pairs.jsonl", (p._asdict() for p in pairs))
    responses = [(s.example, r) for s in train for r in s.responses]
    labels = score_all(task, [e for e, _ in responses], [r for _, r in responses])
    outcomes = [{"prompt": e.prompt, "response": r, "label": y} for (e, r), y in zip(responses, labels)]
    write_jsonl(out.path / "outcomes.jsonl", outcomes)
    flat, gold = gold_steps(task, train)
    write_jsonl(out.path / "steps_gold.jsonl", step_rows(flat, gold))
    write_jsonl(out.path / "heldout_pairs.jsonl", (p._asdict() for p in preference_pairs(task, heldout, 0.0, gen)))
    write_jsonl(out.path / "heldout_steps.jsonl", step_rows(*gold_steps(task, heldout)))
    summary = {"label/pairs": len(pairs), "label/outcomes": len(outcomes), "label/step_responses": len(flat),
               "flops/label": 0.0}
    if "sft" in inputs and cfg.data.mc_rollouts and flat:
        soft, hard, summary["flops/label"] = mc_step_labels(cfg, task, inputs, flat)
        write_jsonl(out.path / "steps_mc_soft.jsonl", step_rows(flat, soft))
        write_jsonl(out.path / "steps_mc_hard.jsonl", step_rows(flat, hard))
        agree = [h == g for hs, gs in zip(hard, gold) for h, g in zip(hs, gs)]
        summary["label/mc_hard_gold_agreement"] = sum(agree) / len(agree)
    summary["wall_s"] = out.wall_s
    out.log(0, **summary)
    out.write_summary(summary)
    out.close()
    return summary
