"""The arithmetic reward-model figures in one run, through the pipeline graph the CLI and the study run.

1. SFT a micro policy to a middling held-out accuracy, and a tiny model further (the RMs' backbone:
   an RM starts from an SFT model of its own size, as in the paper);
2. sample k responses to each of P training prompts and label them: verifier outcomes, correct vs
   incorrect pairs, gold step labels and Monte-Carlo step labels (m completions per step prefix);
3. train a tiny ORM (Bradley–Terry on the pairs) and a tiny PRM (on the hard Monte-Carlo labels);
4. Best-of-N on one pool of 64 samples per held-out prompt.

Returned (and printed last by ``rlhfscale bench rm --json``): the ORM's pair accuracy and the
PRM's step F1 on the pool, the policy's pass@1, Best-of-16 under the better RM and by majority
vote, and the wall time. pass@1 is that of one sample of the pool (``bon/oracle@1``, the same
sampler Best-of-N picks from, as in Chen et al. 2021); the greedy figure is beside it. For
reference, the RMs' backbone's greedy pass@1, and on the label stage's held-out pairs the ORM's
accuracy beside that of the backbone's own log-likelihood, untrained as a reward model
(``rm_backbone_loglik_pair_acc``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config import RunConfig, merge
from ..models.io import load_policy
from ..models.llama import token_logprobs
from ..models.reward import pack
from ..rewards.losses import pair_accuracy
from ..pipeline import GRAPH
from ..study.targets import run_targets
from ..tasks.jsonl import load_preference_pairs

BENCH = {
    "seed": 0,
    "task": {"name": "arithmetic"},
    "policy": {"size": "micro"},
    "sft": {"steps": 300, "batch_size": 64, "lr": 2e-3, "schedule": "constant"},
    "eval": {"n_prompts": 200},
    "data": {"prompts": 4096, "responses_per_prompt": 4, "heldout_prompts": 64, "mc_rollouts": 4},
    "rm": {"size": "tiny", "steps": 600, "batch_size": 32, "lr": 1e-3, "bf16": True},
    "bon": {"prompts": 100, "n_max": 64},
}
# The RMs' backbone: 25k distinct problems and a cosine decay give a tiny SFT model of greedy pass@1 0.9 in
# the time that 4k problems at a constant rate gave 0.65 (the RM figures came out the same within noise).
RM_BACKBONE = {"policy": {"size": "tiny"}, "sft": {"steps": 400, "lr": 3e-3, "schedule": "cosine", "n_examples": 25000}}
# The PRM learns step checking slowly (held-out step F1 0.62 after 300 steps on 4k responses, 0.75 after
# 1500 on 16k); more steps do not help reliably at this size (0.70 after 2500).
PRM = {"rm": {"kind": "prm", "labels": "mc_hard", "steps": 1500, "batch_size": 64, "lr": 5e-4}}


def config(*overrides: dict) -> RunConfig:
    """The bench config with `overrides` (nested dicts) merged in, in order."""
    data = BENCH
    for extra in overrides:
        data = merge(data, extra)
    return RunConfig.model_validate(data)


@torch.inference_mode()
def response_loglik(policy: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str],
                    responses: list[str]) -> torch.Tensor:
    """log p(response + EOS | prompt) under a causal LM, [N] (float32)."""
    ids, attn, mask = pack(tok, prompts, responses, policy.device)
    return (token_logprobs(policy, ids, attn)[:, -mask.shape[1]:] * mask).sum(-1).cpu()


def loglik_pair_accuracy(model_dir: Path, pairs_path: Path) -> float:
    """How often a causal LM gives the chosen response of a pair the higher log-likelihood."""
    policy, tok = load_policy(model_dir)
    pairs = load_preference_pairs(pairs_path)
    prompts = [p.prompt for p in pairs]
    return pair_accuracy(response_loglik(policy, tok, prompts, [p.chosen for p in pairs]),
                         response_loglik(policy, tok, prompts, [p.rejected for p in pairs]))


def run_rm_bench(out: str | Path | None = None) -> dict:
    """Run the whole chain under `out` (default: a temporary directory); the headline figures."""
    with tempfile.TemporaryDirectory() as tmp:
        return _bench(Path(out) if out is not None else Path(tmp))


def _bench(root: Path) -> dict:
    """The pipeline graph's stages with their inputs pinned: two SFT runs, sample + label, ORM, PRM, Best-of-N."""
    start = time.perf_counter()
    cfg = config()

    def run(cfg: RunConfig, target: str, out: str, **pins: dict[str, str]) -> dict[str, dict[str, float]]:
        return run_targets(GRAPH, cfg.model_dump(mode="json"), [target], root / out, **pins)

    run(cfg, "sft", "policy")
    backbone_sft = run(config(RM_BACKBONE), "sft", "rm_backbone")["sft"]
    policy = {"sft": str(root / "policy")}
    run(cfg, "label", "label", pinned=policy)
    backbone = {"label": str(root / "label"), "rm_base": str(root / "rm_backbone")}
    orm = run(config({"rm": {"kind": "orm", "init": "policy"}}), "rm", "orm", pinned=backbone)["rm"]
    run(config(PRM, {"rm": {"init": "policy"}}), "rm", "prm", pinned=backbone)
    b = run(cfg, "bon", "bon", pinned=policy | {"rm": str(root / "orm")}, extra_inputs={"rm_prm": str(root / "prm")})["bon"]
    best_by = max(["orm"] + [f"prm_{how}" for how in ("min", "last", "mean", "prod")], key=lambda k: b[f"bon/{k}@16"])
    return {
        "orm_pair_acc": b["orm/pair_acc"],
        "prm_step_f1": b["prm/step_f1"],
        "policy_pass@1": b["bon/oracle@1"],
        "policy_greedy_pass@1": b["eval/pass@1_sft"],
        "bon16_best": b[f"bon/{best_by}@16"],
        "bon16_best_by": best_by,
        "bon16_majority": b["bon/majority@16"],
        "rm_backbone_greedy_pass@1": backbone_sft["eval/pass@1"],
        # on the label stage's held-out pairs: the trained ORM and its backbone's log-likelihood
        "orm_heldout_pair_acc": orm.get("rm/pair_acc", float("nan")),
        "rm_backbone_loglik_pair_acc": loglik_pair_accuracy(root / "rm_backbone" / "policy",
                                                            root / "label" / "heldout_pairs.jsonl"),
        "wall_s": time.perf_counter() - start,
    }
