"""Stage `bon`: reward models judged on one pool of policy samples per held-out prompt.

The policy (input ``sft``: a run directory or a policy folder) samples
``bon.n_max`` responses to each of ``bon.prompts`` test prompts. From that one pool, for N = 1,
2, 4, ... up to n_max, the expected gold value (accuracy; the gold rater's score for chat) of the
response picked among N drawn without replacement (`rewards.metrics.best_of_n`):
- ``bon/orm@N``: by an outcome (or multi-task) RM; ``bon/genrm@N``: by a generative verifier
  (log p(Yes) − log p(No)); ``bon/llrm@N``: by a likelihood RM; ``bon/prm_<agg>@N``: by a process RM
  under each step aggregation; the RMs are the inputs whose names start with ``rm`` (rm run directories or RM folders),
  named by kind, one of each at most;
- ``bon/orm_proxy@N`` (``bon/genrm_proxy@N``, ``bon/prm_<agg>_proxy@N`` for the PRM's own ``rm.aggregation``): the
  expected RM (proxy) score of that picked response, the proxy side of over-optimization (Gao et
  al. 2022: gold and proxy against sqrt(KL), KL = log N - (N - 1) / N);
- ``bon/majority@N``: by majority vote over final answers (tasks with answers);
- ``bon/oracle@N``: by the gold value itself.
Also ``orm/pair_acc``, ``genrm/pair_acc``, ``llrm/pair_acc`` and ``prm/pair_acc`` on the pool's pairs with unequal
gold value, ``prm/step_acc`` and ``prm/step_f1`` against gold step labels (with ``prm/step_f1_all_errors``,
the F1 of calling every step wrong, and ``prm/step_error_rate``), the policy's greedy
``eval/pass@1``, and the names ``bon/policy`` and ``bon/rm`` (in summary.json only: the
returned metrics are numbers).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from pydantic import BaseModel

from ..contract import view
from ..errors import BadInput
from ..models.ladder import count_non_embedding
from ..models.io import DTYPES
from ..models.reward import OUTCOME_KINDS, RewardModel, load_reward_model
from ..pipeline import STAGES
from ..rewards.aggregate import AGGREGATIONS, aggregate_steps
from ..rm.data import count_tokens
from ..rewards.metrics import best_of_n, majority_of_n, pool_pair_accuracy, step_metrics
from ..rollout.evaluate import evaluate, generate
from ..tasks import score_all
from .common import input_policy, max_new_tokens, policy_folder, setup
from .rundir import RunDir


def reward_models(cfg: BaseModel, inputs: dict[str, str]) -> dict[str, tuple[str, RewardModel]]:
    """kind -> (folder, model) of every input whose name starts with ``rm``."""
    rms: dict[str, tuple[str, RewardModel]] = {}
    for name in sorted(n for n in inputs if n.startswith("rm")):
        path = Path(inputs[name])
        path = path / "rm" if (path / "rm" / "config.json").is_file() else path
        rm = load_reward_model(path, cfg.device, cfg.rm.aggregation)
        rm.model.to(DTYPES[cfg.dtype])
        if rm.kind in rms:
            raise BadInput(f"{path}: expected at most one {rm.kind} reward model, found a second one")
        rms[rm.kind] = (str(path), rm)
    return rms


def curve(name: str, scores: torch.Tensor, values: torch.Tensor, ns: list[int]) -> dict[str, float]:
    return {f"bon/{name}@{n}": best_of_n(scores, values, n) for n in ns}


def proxy_curve(name: str, scores: torch.Tensor, ns: list[int]) -> dict[str, float]:
    """The expected RM score of the response the RM picks among N: ``bon/<name>_proxy@N``."""
    return {f"bon/{name}_proxy@{n}": best_of_n(scores, scores, n) for n in ns}


def prm_metrics(rm: RewardModel, prompts: list[str], responses: list[str], gold_steps: list[list[bool]],
                values: torch.Tensor, ns: list[int]) -> dict[str, float]:
    """A PRM's curve under every aggregation, its pair accuracy and its step accuracy / F1."""
    logits = rm.step_logits_texts(prompts, responses)  # per response [S_i]
    padded = pad_sequence(logits, batch_first=True)  # [P * M, S]
    mask = pad_sequence([torch.ones(len(x), dtype=torch.bool) for x in logits], batch_first=True)
    out: dict[str, float] = {}
    for how in AGGREGATIONS:
        scores = aggregate_steps(padded, mask, how).view_as(values)
        out |= curve(f"prm_{how}", scores, values, ns)
        if how == rm.aggregation:
            out |= proxy_curve(f"prm_{how}", scores, ns) | {"prm/pair_acc": pool_pair_accuracy(scores, values)}
    return out | {f"prm/{k}": v for k, v in step_metrics(logits, gold_steps).items()}


def run(cfg: BaseModel, inputs: dict[str, str], out_dir: str | Path) -> dict[str, float]:
    cfg = view(STAGES["bon"], cfg)
    task = setup(cfg)
    if "sft" not in inputs:
        raise BadInput("bon: expected a policy (an sft run directory or a policy folder), found none")
    policy_path = policy_folder(inputs["sft"])
    policy, tok = input_policy(cfg, policy_path)
    rms = reward_models(cfg, inputs)
    out = RunDir(out_dir, cfg)
    examples, M, budget = task.examples("test", cfg.bon.prompts), cfg.bon.n_max, max_new_tokens(cfg, task)
    sc = cfg.sampling
    pool = generate(policy, tok, [e.prompt for e in examples], n=M, temperature=sc.temperature, top_p=sc.top_p,
                    top_k=sc.top_k, max_new_tokens=budget, seed=cfg.seed)  # [P][M]
    flat = score_all(task, [e for e in examples for _ in range(M)], [r for rs in pool for r in rs])
    values = torch.tensor(flat, dtype=torch.float64).view(len(examples), M)
    ns = sorted({min(2**i, M) for i in range(M.bit_length() + 1)})
    prompts = [e.prompt for e in examples for _ in range(M)]
    responses = [r for rs in pool for r in rs]
    flops = 2.0 * count_non_embedding(policy) * count_tokens(tok, responses)

    summary = curve("oracle", values, values, ns)
    if all(e.answer for e in examples):
        answers = [[task.extract_answer(r) for r in rs] for rs in pool]
        gen = torch.Generator().manual_seed(cfg.seed)
        summary |= {f"bon/majority@{n}": majority_of_n(answers, [e.answer for e in examples], n, cfg.bon.draws, gen)
                    for n in ns}
    for kind, (_, rm) in rms.items():
        if kind in OUTCOME_KINDS:  # one score per response, its curves named by the kind's short name
            name, scores = OUTCOME_KINDS[kind], rm.score_texts(prompts, responses).view_as(values)
            summary |= curve(name, scores, values, ns) | proxy_curve(name, scores, ns)
            summary[f"{name}/pair_acc"] = pool_pair_accuracy(scores, values)
        else:
            gold_steps = [task.step_labels(e, r) for e, rs in zip(examples, pool) for r in rs]
            summary |= prm_metrics(rm, prompts, responses, gold_steps, values, ns)
        flops += 2.0 * count_non_embedding(rm.model) * count_tokens(rm.tok, map(str.__add__, prompts, responses))
    summary |= {"eval/pass@1": evaluate(policy, tok, task, examples, max_new_tokens=budget)["eval/pass@1"],
                "bon/pool_score": values.mean().item(), "flops/bon": flops, "wall_s": out.wall_s}
    out.log(0, **summary)
    out.write_summary(summary | {"bon/policy": str(policy_path),
                                 "bon/rm": ", ".join(f"{kind}={path}" for kind, (path, _) in rms.items())})
    out.close()
    return summary
