"""GPU settings with CPU fallbacks: `dtype` of the weights (bf16 trains on a CPU), gradient checkpointing (the same
gradients, on the fast path and on transformers' forward), devices of the reference / RM / critic, and their refusals."""

import sys

import pytest
import torch
from fake_rewards import coin_flips
from transformers import AutoModelForCausalLM, Qwen2Config

from rlhfscale import checks, cli
from rlhfscale.config import RunConfig
from rlhfscale.errors import BadInput
from rlhfscale.models import forward
from rlhfscale.models.io import DTYPES, new_policy
from rlhfscale.models.train import checkpoint_activations, response_batch, sft_loss
from rlhfscale.rl.trainer import train
from rlhfscale.stages.common import available
from rlhfscale.tasks import make_task


def test_a_bf16_grpo_step_runs_on_a_cpu_and_updates_bf16_weights():
    cfg = RunConfig.model_validate({"dtype": "bf16", "rl": {"steps": 2, "prompts_per_step": 8, "n_samples": 4,
                                                            "lr": 0.01, "warmup": 0}})
    model, tok = new_policy("micro", 0, 64)
    policy = model.to(DTYPES[cfg.dtype])
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    rows = []
    train(policy, tok, make_task(cfg.task).examples("train", 16), coin_flips(), cfg, max_new_tokens=8,
          on_step=lambda step, info: rows.append(info))
    assert {p.dtype for p in policy.parameters()} == {torch.bfloat16}
    moved = [k for k, v in policy.state_dict().items() if not torch.equal(v, start[k])]
    assert "model.layers.0.self_attn.q_proj.weight" in moved and len(rows) == 2
    assert all(torch.isfinite(torch.tensor(r["rl/pg_loss"])) for r in rows)


def tiny_qwen2(vocab: int) -> AutoModelForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=vocab, max_position_embeddings=128)
    return AutoModelForCausalLM.from_config(config)


def sft_grads(model, tok) -> tuple[dict[str, torch.Tensor], int]:
    """The SFT loss's gradients on two examples, and the bytes of activations the forward kept for the backward."""
    pairs = [(tok.encode("12+3="), tok.encode("15")), (tok.encode("7-5+40="), tok.encode("42"))]
    ids, attn, mask = response_batch(pairs, tok.pad_token_id)
    model.train()
    model.zero_grad()
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (kept.append(t.numel() * t.element_size()), t)[1],
                                                  lambda t: t):
        loss = sft_loss(model, ids, attn, mask)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, sum(kept)


@pytest.mark.parametrize("arch", ["ladder", "qwen2"])
def test_gradient_checkpointing_gives_the_same_gradients(arch):
    """On the fast Llama path (its own per-layer recomputation) and on transformers' forward (a Qwen2): the same
    gradients, and the forward keeps far fewer activations (each layer's are recomputed in the backward)."""
    ladder, tok = new_policy("micro", 0, 64)
    model = ladder if arch == "ladder" else tiny_qwen2(len(tok))
    assert forward.fast_path_ok(model) == (arch == "ladder")
    plain, kept_plain = sft_grads(model, tok)
    checkpoint_activations(model, True)
    again, kept = sft_grads(model, tok)
    assert kept < 0.5 * kept_plain, (kept, kept_plain)
    assert plain.keys() == again.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(again[name], plain[name], atol=1e-6, rtol=1e-5)


def main(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    monkeypatch.setattr(sys, "argv", ["rlhfscale", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


REFUSED = [
    (["dtype=fp16"], "dtype=fp16: expected CUDA devices for fp16 weights, found a cpu device"),
    (["dtype=bf16", "rl.bf16=true"], "rl.bf16=true: does nothing here: the weights are bf16 already"),
    (["rl.lora.rank=8", "rl.ref_device=cpu"], "rl.ref_device=cpu: does nothing here: with rl.lora.rank > 0"),
    (["rl.critic_device=cpu"], "rl.critic_device=cpu: does nothing here: grpo trains no critic"),
    (["rl.reward_device=cpu"], "rl.reward_device=cpu: does nothing here: no reward model to place"),
    (["rl.ref_device=gpu0"], "rl.ref_device: expected a torch device (cpu, cuda, cuda:1, mps), found 'gpu0'"),
]


@pytest.mark.parametrize("overrides, fragment", REFUSED)
def test_gpu_settings_that_cannot_act_are_refused_in_one_line(monkeypatch, capsys, tmp_path, overrides, fragment):
    code, lines = main(monkeypatch, capsys, "rl", *overrides, "--out", str(tmp_path / "run"))
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_the_same_settings_pass_where_they_act():
    ok = [{"dtype": "bf16"}, {"rl": {"algorithm": "ppo", "critic_device": "cpu", "ref_device": "cpu"}},
          {"rl": {"reward": {"orm": 1.0}, "reward_device": "cpu"}}, {"gradient_checkpointing": True}]
    for overrides in ok:
        assert isinstance(checks.rl(RunConfig.model_validate(overrides).model_dump(mode="json")), list), overrides


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_a_cuda_device_on_a_machine_without_one_is_one_line():
    with pytest.raises(BadInput, match=r"^rl.critic_device=cuda:1: expected a cuda device on this machine, found none; "
                                       r"use cpu$"):
        available("cuda:1", "rl.critic_device")
    available(None, "rl.critic_device")  # unset: the run's device


def test_gradient_checkpointing_on_transformers_forward_keeps_shared_prompt_log_probs_right():
    """RL's n responses per prompt share the prompt's KV cache on transformers' forward; checkpointed layers drop a
    cache, so under checkpointing the rows run whole, with the same log-probs and gradients."""
    _, tok = new_policy("micro", 0, 64)
    model = tiny_qwen2(len(tok)).train()
    prompts = [tok.encode("12+3="), tok.encode("12+3="), tok.encode("7-5+40=")]
    responses = [tok.encode("15"), tok.encode("16"), tok.encode("42")]
    from rlhfscale.models.train import left_pad

    p_ids, p_mask = left_pad(prompts, tok.pad_token_id)
    r_ids = torch.tensor([r + [tok.pad_token_id] * (2 - len(r)) for r in responses])
    r_mask = torch.ones_like(r_ids)

    def logprobs_and_grad():
        model.zero_grad()
        lp = forward.response_logprobs(model, p_ids, p_mask, r_ids, r_mask)
        lp.sum().backward()
        return lp.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    lp, grad = logprobs_and_grad()
    checkpoint_activations(model, True)
    lp_ckpt, grad_ckpt = logprobs_and_grad()
    torch.testing.assert_close(lp_ckpt, lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_ckpt, grad, atol=1e-5, rtol=1e-4)
