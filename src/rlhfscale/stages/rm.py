"""Stage `rm`: train an outcome, process or multi-task reward model; score it on held-out data.

- ``rm.kind=orm``: Bradley–Terry on preference pairs (``rm.loss=bt``) or BCE on correctness labels
  (``bce``; at every response token with ``rm.token_level``); ``multitask``: both, mixed by
  ``rm.multitask_weight``; ``prm``: per-step BCE on the step labels ``rm.labels`` (gold, mc_hard,
  mc_soft); ``generative``: the causal LM itself, the next-token loss of a Yes / No verdict token
  (``rm.genrm_yes`` / ``rm.genrm_no``) after ``rm.genrm_question`` on the correctness labels (`models.genrm`);
  ``likelihood``: the causal LM itself, scored ``rm.likelihood_beta`` / |y| · log π(y | x) and trained with
  Bradley–Terry on the pairs through that score (`models.llrm`).
- Data: the files of the ``label`` input; an input named after a file replaces it (``pairs``,
  ``outcomes``, ``steps``, ``heldout_pairs``, ``heldout_steps``: jsonl paths).
- Start: see ``rm.init`` (the backbone of an SFT policy, or a fresh ladder model).
- Held-out: ``rm/pair_acc`` on gold-preference pairs; for a PRM also ``prm/step_acc`` and
  ``prm/step_f1`` against gold step labels (`rewards.metrics.step_metrics`).

With ``rm.lora.rank`` > 0 only LoRA adapters on the backbone and the score head train; ``rm_adapter/``
holds them in peft's format. The model is saved in ``rm/`` (loads with `AutoModelForSequenceClassification`,
`AutoModelForTokenClassification`, or for a generative or likelihood RM `AutoModelForCausalLM` with ``genrm`` or
``likelihood_rm`` in its config,
or `models.reward.load_reward_model`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from ..contract import view
from ..errors import BadInput
from ..models import genrm, llrm, lora
from ..models.io import DTYPES, load_policy, save_policy
from ..models.train import checkpoint_activations
from ..models.ladder import build_model, count_non_embedding, llama_config, preset
from ..models.reward import RewardModel, build_reward_model, reward_model_from
from ..models.tokenizer import build_tokenizer
from ..pipeline import STAGES
from ..rm.data import encode_outcomes, encode_preferences, encode_split_pairs, encode_steps, load_outcomes
from ..rewards.losses import pair_accuracy
from ..rewards.metrics import step_metrics
from ..rm.train import RMData, train_reward_model
from ..tasks.jsonl import load_preference_pairs, load_step_labels
from .common import policy_folder, start
from .rundir import Progress, RunDir


def of_size(config, size: str) -> bool:
    """Whether a model config has the shape of the ladder size `size`."""
    p = preset(size)
    return (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (p.hidden, p.layers, p.ffn)


def initial_model(cfg: BaseModel, inputs: dict[str, str]):
    """(model, tokenizer, whether the backbone came from a policy), as ``rm.init`` says. The backbone is
    the ``rm_base`` input's policy (an SFT run at ``rm.size``), else ``rm.init_path``; with ``rm.init=sft``
    the trial's own SFT policy (input ``sft``, of ``rm.size``). A generative or likelihood RM is the causal
    LM whole (its LM head predicts the verdict, or scores the response)."""
    head = {"prm": "prm", "generative": "lm", "likelihood": "lm"}.get(cfg.rm.kind, "orm")
    if cfg.rm.init == "sft" and "sft" not in inputs:
        raise BadInput("rm.init=sft: expected the trial's SFT policy (an sft run) to start the RM from, found none")
    start = "sft" if cfg.rm.init == "sft" else "rm_base"
    path = str(policy_folder(inputs[start])) if start in inputs else cfg.rm.init_path
    policy, tok = load_policy(path, cfg.device) if path else (None, build_tokenizer())
    if cfg.rm.init == "sft" and not of_size(policy.config, cfg.rm.size):
        raise BadInput(f"rm.size={cfg.rm.size}: rm.init=sft starts the RM from the trial's SFT policy, which is of "
                       f"another size; set rm.size to the policy's size, or rm.init=auto")
    if policy is not None and cfg.rm.init != "scratch":
        if cfg.rm.init in ("policy", "sft") or "rm_base" not in inputs or of_size(policy.config, cfg.rm.size):
            if head == "lm":
                return policy, tok, True
            return reward_model_from(head, policy, tok.pad_token_id, cfg.seed), tok, True
    if cfg.rm.init == "policy":
        raise BadInput("rm.init: expected a backbone to start from (an rm_base or sft run, or rm.init_path), "
                       "found none")
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if head == "lm":
        return build_model(cfg.rm.size, len(tok), cfg.seed, cfg.policy.max_len, **ids).to(cfg.device), tok, False
    config = llama_config(cfg.rm.size, len(tok), cfg.policy.max_len, **ids)
    return build_reward_model(head, config, tok.pad_token_id, cfg.seed).to(cfg.device), tok, False


def data_file(inputs: dict[str, str], name: str, stem: str | None = None) -> Path:
    """The input file `name`, else ``<stem or name>.jsonl`` of the label run."""
    if name in inputs:
        return Path(inputs[name])
    if "label" not in inputs:
        raise BadInput(f"rm: expected {name} data (a label run or a {name} file), found neither")
    return Path(inputs["label"]) / f"{stem or name}.jsonl"


def heldout_file(inputs: dict[str, str], name: str) -> Path | None:
    """The input file `name`, else the label run's ``<name>.jsonl`` when it holds data, else None."""
    if name in inputs:
        return Path(inputs[name])
    path = Path(inputs["label"]) / f"{name}.jsonl" if "label" in inputs else None
    return path if path is not None and path.is_file() and path.stat().st_size > 0 else None


def training_data(cfg: BaseModel, inputs: dict[str, str], rm: RewardModel) -> RMData:
    """The encoded training data the RM kind and loss call for."""
    if cfg.rm.kind == "prm":
        path = data_file(inputs, "steps", f"steps_{cfg.rm.labels}")
        return RMData(steps=encode_steps(rm.tok, load_step_labels(path), str(path), rm.step_split))
    data = RMData()
    if cfg.rm.kind == "generative":
        data.outcomes = encode_outcomes(rm.tok, load_outcomes(data_file(inputs, "outcomes")))
        return data
    if cfg.rm.kind == "likelihood":
        data.split_pairs = encode_split_pairs(rm.tok, load_preference_pairs(data_file(inputs, "pairs")))
        return data
    if cfg.rm.kind == "multitask" or cfg.rm.loss == "bt":
        data.pairs = encode_preferences(rm.tok, load_preference_pairs(data_file(inputs, "pairs")))
    if cfg.rm.kind == "multitask" or cfg.rm.loss == "bce":
        data.outcomes = encode_outcomes(rm.tok, load_outcomes(data_file(inputs, "outcomes")))
    return data


def heldout_metrics(inputs: dict[str, str], rm: RewardModel) -> dict[str, float]:
    """Pair accuracy on held-out gold-preference pairs; step accuracy and F1 of a PRM on gold labels."""
    metrics = {}
    if path := heldout_file(inputs, "heldout_pairs"):
        pairs = load_preference_pairs(path)
        prompts = [p.prompt for p in pairs]
        chosen = rm.score_texts(prompts, [p.chosen for p in pairs])
        metrics["rm/pair_acc"] = pair_accuracy(chosen, rm.score_texts(prompts, [p.rejected for p in pairs]))
        metrics["rm/heldout_pairs"] = float(len(pairs))  # what the accuracy rests on
    if rm.kind == "prm" and (path := heldout_file(inputs, "heldout_steps")):
        examples = load_step_labels(path)
        joiner = "\n" if rm.step_split == "line" else "\n\n"
        logits = rm.step_logits_texts([e.prompt for e in examples], [joiner.join(e.steps) for e in examples])
        gold = [[y > 0.5 for y in e.labels] for e in examples]
        metrics |= {f"prm/{k}": v for k, v in step_metrics(logits, gold).items()}
    return metrics


def run(cfg: BaseModel, inputs: dict[str, str], out_dir: str | Path) -> dict[str, float]:
    cfg = view(STAGES["rm"], cfg)
    start(cfg)
    model, tok, from_policy = initial_model(cfg, inputs)
    model = checkpoint_activations(model.to(DTYPES[cfg.dtype]), cfg.gradient_checkpointing)
    if cfg.rm.kind == "generative":
        words = (cfg.rm.genrm_question, cfg.rm.genrm_yes, cfg.rm.genrm_no)
        genrm.mark(model, *words)
        genrm.verdict_of(tok, *words)  # refuses a tokenizer where the verdicts are not single tokens
    elif cfg.rm.kind == "likelihood":
        llrm.mark(model, cfg.rm.likelihood_beta)
    elif cfg.rm.lm_coef and not model.config.tie_word_embeddings:
        raise BadInput("rm.lm_coef: expected a backbone with tied input and output embeddings (a reward model keeps "
                       "no separate LM head), found tie_word_embeddings=false")
    head = {"prm": "prm", "generative": "policy", "likelihood": "policy"}.get(cfg.rm.kind, "orm")  # what lora adapts
    wrapper = lora.attach(model, cfg.rm.lora, head, "rm.lora") if cfg.rm.lora.rank else None
    model = lora.adapted(wrapper) if wrapper is not None else model
    rm = RewardModel(model, tok, cfg.rm.aggregation, cfg.task.step_split)  # a PRM finds steps as the task writes them
    data = training_data(cfg, inputs, rm)
    out = RunDir(out_dir, cfg)
    weight = cfg.rm.multitask_weight if cfg.rm.kind == "multitask" else float(cfg.rm.loss == "bt")
    last: dict[str, float] = {}
    with Progress(cfg.rm.steps, f"rm:{cfg.rm.kind}") as bar:
        def on_step(step: int, stats: dict[str, float]) -> None:
            last.update(stats)
            if step % 10 == 0 or step == cfg.rm.steps:
                out.log(step, **{f"rm/{k}": v for k, v in stats.items()})
            bar.advance(f"loss {stats['loss']:.3f}")

        tokens = train_reward_model(
            model, data, kind=rm.kind, steps=cfg.rm.steps, batch_size=cfg.rm.batch_size, lr=cfg.rm.lr,
            warmup=cfg.rm.warmup, weight_decay=cfg.rm.weight_decay, weight=weight, pad_id=tok.pad_token_id,
            seed=cfg.seed, schedule=cfg.rm.schedule, bf16=cfg.rm.bf16, token_level=cfg.rm.token_level,
            lm_coef=cfg.rm.lm_coef, verdict=rm.verdict, beta=cfg.rm.likelihood_beta, on_step=on_step)
    if wrapper is None:
        save_policy(model, tok, out.path / "rm")
    else:  # the adapters (and the score head) in peft's format, the merged model where later stages read it
        lora.save(wrapper, tok, out.path / "rm", out.path / "rm_adapter")
    n_params = count_non_embedding(model)
    summary = {
        "rm/loss": last.get("loss", float("nan")),
        **heldout_metrics(inputs, rm),
        "rm/pairs": len(data.pairs) + len(data.split_pairs), "rm/outcomes": len(data.outcomes),
        "rm/step_responses": len(data.steps),
        "rm/params": n_params, "rm/init_from_policy": float(from_policy),
        "flops/rm": 6.0 * n_params * tokens,
        "wall_s": out.wall_s,
    }
    out.log(cfg.rm.steps, **summary)
    out.write_summary(summary)
    out.close()
    return summary
