"""LoRA through peft: only the adapters train, the reference is the base model with the adapters off, adapters
save in peft's format and merge into a plain transformers folder; a ladder model with adapters leaves the fast path."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhfscale.config import LoraConfig, RunConfig
from rlhfscale.models import forward, lora
from rlhfscale.models.io import new_policy
from rlhfscale.models.reward import reward_model_from
from rlhfscale.rl.trainer import train
from rlhfscale.rm.sources import Rewards
from rlhfscale.rm.train import RMData, train_reward_model
from rlhfscale.tasks import make_task

peft = pytest.importorskip("peft")
ADAPTERS = LoraConfig(rank=4, alpha=8.0)


def batch(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def base_weights(model) -> dict[str, torch.Tensor]:
    """The base weights of a model with or without LoRA layers, under the plain model's names (a head peft trains
    a copy of keeps its original beside it)."""
    return {k.replace("base_layer.", "").replace("original_module.", ""): v.clone()
            for k, v in model.state_dict().items() if "lora_" not in k and "modules_to_save" not in k}


def randomize_adapters(model, seed: int = 0) -> None:
    """LoRA B starts at zero (the adapted model starts as the base); give it values so the adapters matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def test_a_model_with_adapters_takes_the_transformers_forward_and_the_adapters_act():
    model, tok = new_policy("micro", 0, 64)
    ids, attn = batch(tok, ["12+3=", "7-5+40="])
    before = forward.token_logprobs(model, ids, attn)
    assert forward.fast_path_ok(model)
    adapted = lora.adapted(lora.attach(model, ADAPTERS, "policy", "rl.lora"))
    assert "LoRA" in forward.fast_path_reason(adapted)
    torch.testing.assert_close(forward.token_logprobs(adapted, ids, attn), before, atol=1e-4, rtol=0)  # B = 0
    randomize_adapters(adapted)
    moved = forward.token_logprobs(adapted, ids, attn)
    assert (moved - before).abs().max() > 1e-2
    with lora.adapters_off(adapted):  # the reference: the base model, as loaded
        torch.testing.assert_close(forward.token_logprobs(adapted, ids, attn), before, atol=1e-4, rtol=0)
    torch.testing.assert_close(forward.token_logprobs(adapted, ids, attn), moved)  # on again after


def test_adapters_save_in_peft_format_and_merge_into_a_plain_transformers_folder(tmp_path):
    model, tok = new_policy("micro", 0, 64)
    model.save_pretrained(tmp_path / "base")
    wrapper = lora.attach(model, ADAPTERS, "policy", "rl.lora")
    randomize_adapters(lora.adapted(wrapper))
    ids, attn = batch(tok, ["12+3=", "7-5+40="])
    expected = forward.token_logprobs(lora.adapted(wrapper), ids, attn)
    lora.save(wrapper, tok, tmp_path / "merged", tmp_path / "adapter")

    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter")
    torch.testing.assert_close(forward.token_logprobs(lora.adapted(reloaded), ids, attn), expected, atol=1e-4, rtol=0)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # no peft needed
    assert forward.fast_path_ok(merged)
    torch.testing.assert_close(forward.token_logprobs(merged, ids, attn), expected, atol=1e-4, rtol=0)


def test_grpo_with_adapters_trains_only_the_adapters():
    """Two GRPO steps at a large learning rate: every base weight is bit-identical after, the adapters moved,
    the reference stayed the base model (the KL of the rollouts to it grew from 0)."""
    cfg = RunConfig.model_validate({"rl": {"steps": 2, "prompts_per_step": 8, "n_samples": 4, "lr": 0.05,
                                           "warmup": 0, "lora": {"rank": 4}}})
    task = make_task(cfg.task)
    model, tok = new_policy("micro", 0, 64)
    start = base_weights(model)
    policy = lora.adapted(lora.attach(model, cfg.rl.lora, "policy", "rl.lora"))
    gen = torch.Generator().manual_seed(0)

    def coin_flips(examples, responses, rollout):  # rewards with a spread in every group
        scores = torch.randint(0, 2, (len(responses),), generator=gen).float()
        return Rewards(scores, torch.zeros_like(rollout.response_mask, dtype=torch.float), scores, {})

    steps = []
    train(policy, tok, task.examples("train", 16), coin_flips, cfg, max_new_tokens=8,
          on_step=lambda step, info: steps.append(info))
    after = base_weights(policy)
    assert after.keys() == start.keys()
    assert all(torch.equal(after[k], start[k]) for k in start)
    assert all(p.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_B" in n)
    assert steps[0]["rl/kl"] == pytest.approx(0.0, abs=1e-4) and steps[1]["rl/kl"] > 1e-3


def test_a_reward_model_with_adapters_trains_the_adapters_and_its_head_and_reloads_merged(tmp_path):
    policy, tok = new_policy("micro", 0, 64)
    model = reward_model_from("orm", policy, tok.pad_token_id, 0)
    start = base_weights(model)
    wrapper = lora.attach(model, ADAPTERS, "orm", "rm.lora")
    adapted = lora.adapted(wrapper)
    pairs = [(tok.encode("1+1=2"), tok.encode("1+1=3")), (tok.encode("2+2=4"), tok.encode("2+2=5"))]
    train_reward_model(adapted, RMData(pairs=pairs), kind="orm", steps=5, batch_size=2, lr=0.05, warmup=0,
                       weight_decay=0.0, weight=1.0, pad_id=tok.pad_token_id, seed=0)
    after = base_weights(adapted)
    changed = {k for k in start if not torch.equal(after[k], start[k])}
    assert changed == set()  # the original head is kept aside; peft trains a copy of it
    trained_head = adapted.score.modules_to_save["default"].weight
    assert not torch.equal(trained_head, start["score.weight"])
    ids, attn = batch(tok, ["1+1=2", "2+2=5"])
    h = forward.hidden_states(adapted, ids, attn)[:, -1]
    expected = adapted.score(h).squeeze(-1)
    lora.save(wrapper, tok, tmp_path / "rm", tmp_path / "rm_adapter")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    got = merged.score(forward.hidden_states(merged, ids, attn)[:, -1]).squeeze(-1)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_target_modules_that_match_nothing_are_one_line():
    from rlhfscale.errors import BadInput

    model, _ = new_policy("micro", 0, 64)
    with pytest.raises(BadInput, match=r"rl.lora.target_modules=\['qkv'\]: expected modules of a LlamaForCausalLM"):
        lora.attach(model, LoraConfig(rank=4, target_modules=["qkv"]), "policy", "rl.lora")


def test_the_actor_of_a_ladder_policy_with_adapters_is_a_merged_copy_on_the_fast_path():
    from rlhfscale.rl.state import make_actor, sync_actor

    model, tok = new_policy("micro", 0, 64)
    policy = lora.adapted(lora.attach(model, ADAPTERS, "policy", "rl.lora"))
    actor = make_actor(policy, bf16=False)
    assert actor is not policy and forward.fast_path_ok(actor)
    randomize_adapters(policy)
    ids, attn = batch(tok, ["12+3=", "7-5+40="])
    assert (forward.token_logprobs(actor, ids, attn) - forward.token_logprobs(policy, ids, attn)).abs().max() > 1e-2
    sync_actor(actor, policy)
    torch.testing.assert_close(forward.token_logprobs(actor, ids, attn), forward.token_logprobs(policy, ids, attn),
                               atol=1e-4, rtol=0)
    assert make_actor(policy, bf16=True).dtype == torch.bfloat16


def test_the_rm_stage_with_adapters_saves_them_and_a_merged_model_whose_backbone_is_the_start_plus_their_update(
        tmp_path):
    """A scratch ORM (its start rebuilt here from the seed) trained through the rm stage with rm.lora: rm/ is the
    start plus exactly (alpha / r) B A on the adapted layers, every other backbone weight bit-identical."""
    import json

    from safetensors.torch import load_file

    from rlhfscale.models.ladder import llama_config
    from rlhfscale.models.reward import build_reward_model
    from rlhfscale.models.tokenizer import build_tokenizer
    from rlhfscale.stages import rm

    rows = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a in range(9) for b in range(3)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig.model_validate({"rm": {"size": "nano", "init": "scratch", "steps": 4, "batch_size": 4,
                                           "lr": 0.01, "lora": {"rank": 4, "alpha": 8.0}}})
    rm.run(cfg, {"pairs": str(tmp_path / "pairs.jsonl")}, tmp_path / "run")

    tok = build_tokenizer()
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    start = build_reward_model("orm", llama_config("nano", len(tok), cfg.policy.max_len, **ids), tok.pad_token_id,
                               cfg.seed).state_dict()
    merged = load_file(tmp_path / "run" / "rm" / "model.safetensors")
    adapter = load_file(tmp_path / "run" / "rm_adapter" / "adapter_model.safetensors")
    adapted = 0
    for name, weight in start.items():
        key = "base_model.model." + name.removesuffix(".weight")
        if f"{key}.lora_A.weight" in adapter:
            delta = 2.0 * adapter[f"{key}.lora_B.weight"] @ adapter[f"{key}.lora_A.weight"]
            torch.testing.assert_close(merged[name], weight + delta, atol=1e-6, rtol=0)
            adapted += 1
        elif name != "score.weight":
            assert torch.equal(merged[name], weight), name
    assert adapted == 7 * 2 and not torch.equal(merged["score.weight"], start["score.weight"])  # the head trained
