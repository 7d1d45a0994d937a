"""Any Hugging Face causal LM as policy, reward model and critic: the forward each model takes, and
tiny random checkpoints of four architectures saved by plain `transformers` (with a byte-level BPE
whose merges swallow the newline) through the normal stages, SFT -> RM (outcome and process) ->
GRPO and PPO -> eval, their outputs reloaded by plain `transformers` (Gemma 2 as a fifth)."""

import json
import math

import pytest
import torch
from hf_models import CHAT_TEMPLATE, CONFIGS, bpe_tokenizer, corpus, plain_logprobs, save_tiny, tiny_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from rlhfscale.config import RunConfig
from rlhfscale.errors import BadInput
from rlhfscale.models import forward, kv_cache, llama, response_logprobs, shared_prefix
from rlhfscale.models.critic import critic_from_policy, response_values, token_values
from rlhfscale.models.io import load_policy, new_policy
from rlhfscale.models.ladder import build_model
from rlhfscale.models.reward import load_reward_model, pack
from rlhfscale.models.steps import step_end_mask, step_end_positions, vocab
from rlhfscale.models.text import encode_prompts
from rlhfscale.rm.data import encode_steps
from rlhfscale.rm.sources import build_reward
from rlhfscale.rollout.evaluate import generate
from rlhfscale.rollout.sampler import sample
from rlhfscale.stages import eval as eval_stage
from rlhfscale.stages import label, rl, rm, sample as sample_stage, sft
from rlhfscale.tasks.arithmetic import ArithmeticTask
from rlhfscale.tasks.jsonl import StepExample

TASK = ArithmeticTask(n_ops=1)


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer(corpus(TASK))


@pytest.fixture(scope="module")
def chat_bpe():
    return bpe_tokenizer(corpus(TASK), chat_template=CHAT_TEMPLATE)


def test_the_fast_path_equals_llama_for_causal_lm_and_takes_nothing_else(bpe):
    """The ladder's Llama takes the fast path, and its log-probs equal `LlamaForCausalLM`'s own forward on the
    same weights; every other architecture, and a Llama with a feature the fast path lacks, is refused."""
    model = build_model("nano", 60, seed=3).eval()
    assert forward.fast_path_ok(model)
    ids = torch.randint(3, 60, (3, 12), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    attn[0, :4] = 0
    with torch.no_grad():
        ours = forward.token_logprobs(model, ids, attn)
        logits = LlamaForCausalLM.forward(model, input_ids=ids, attention_mask=attn,
                                          position_ids=llama.positions_of(attn)).logits
    ref = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    real = (attn[:, :-1] * attn[:, 1:]).bool()  # a real token predicted from a real one
    assert ref[real].abs().max() > 1.0
    torch.testing.assert_close(ours[real], ref[real], atol=1e-4, rtol=0)
    for arch in ("qwen2", "qwen3", "mistral", "gemma2"):
        assert not forward.fast_path_ok(tiny_model(arch, bpe))
    for overrides, word in [({"attention_bias": True}, "attention_bias"), ({"mlp_bias": True}, "mlp_bias"),
                            ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
                             "rope_type"), ({"hidden_act": "gelu"}, "hidden_act")]:
        config = LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, **overrides)
        assert word in forward.fast_path_reason(LlamaForCausalLM(config))


@pytest.fixture(scope="module")
def qwen3(bpe):
    """A Qwen3 whose query norms matter (weights far from 1), and the token ids of three prompts and responses."""
    model = tiny_model("qwen3", bpe, seed=1)
    torch.nn.init.normal_(model.model.layers[0].self_attn.q_norm.weight, 1.0, 0.5)
    examples = TASK.examples("test", 3)
    return model, [e.prompt for e in examples], [e.solution for e in examples]


@pytest.fixture
def no_fast_path(monkeypatch):
    """Every fast-path entry point fails the test if it runs."""
    for module, name in [(llama, "hidden_states"), (llama, "token_logprobs"), (kv_cache, "prefill"),
                         (kv_cache, "decode_step"), (shared_prefix, "response_logprobs"),
                         (shared_prefix, "response_hidden_states")]:
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("the fast path ran"))


def test_an_unsupported_model_is_scored_by_its_own_forward(bpe, qwen3, no_fast_path):
    """Qwen3 normalizes its queries and keys, which the hand-written layer does not: through the fast path its
    log-probs would be off by far more than 1e-4. Routed to the generic path, the trainer's scoring equals
    plain transformers, with prompts shared (the KV-cache path) or not."""
    model, prompts, responses = qwen3
    p_ids, r_ids = encode_prompts(bpe, prompts), bpe(responses, add_special_tokens=False).input_ids
    plain = [plain_logprobs(model, p, r) for p, r in zip(p_ids, r_ids)]
    assert not forward.fast_path_ok(model) and "Qwen3ForCausalLM" in forward.fast_path_reason(model)
    for repeat in (1, 2):
        ours = response_logprobs(model, bpe, prompts * repeat, responses * repeat)
        for got, want in zip(ours, plain * repeat):
            assert len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want)) < 1e-4


def test_the_fast_path_refuses_qwen3_which_it_would_get_wrong(bpe, qwen3, monkeypatch):
    """What the routing prevents: the hand-written Llama layer on Qwen3's weights skips its query/key norms.
    Called directly, it refuses; with the refusal switched off, its numbers are wrong."""
    model, prompts, responses = qwen3
    p_ids, r_ids = encode_prompts(bpe, prompts[:1]), bpe(responses[:1], add_special_tokens=False).input_ids
    ids = torch.tensor([p_ids[0] + r_ids[0]])
    with pytest.raises(BadInput, match="does not implement model_type"):
        llama.token_logprobs(model, ids, torch.ones_like(ids))
    monkeypatch.setattr(llama, "check_config", lambda config: None)
    with torch.no_grad():
        fast = llama.token_logprobs(model, ids, torch.ones_like(ids))[0, len(p_ids[0]) - 1:]
    assert max(abs(a - b) for a, b in zip(fast.tolist(), plain_logprobs(model, p_ids[0], r_ids[0]))) > 1e-2


def test_the_generic_sampler_decodes_as_plain_transformers(bpe, qwen3, no_fast_path):
    """Greedy tokens equal greedy decoding by full forwards; sampled rows that end early (EOS) leave the others'
    numbers alone; the log-probs the sampler records are the trainer's log-probs of the same tokens."""
    model, prompts, _ = qwen3
    p_ids = encode_prompts(bpe, prompts)
    greedy = sample(model, p_ids * 2, max_new_tokens=8, temperature=0.0, eos_id=-1, pad_id=bpe.pad_token_id)
    for row, p in enumerate(p_ids * 2):  # against greedy decoding by full forwards, no cache
        ids = list(p)
        with torch.no_grad():
            for _ in range(8):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        assert greedy.response_ids[row].tolist() == ids[len(p):]

    def draw(eos: int):
        return sample(model, p_ids * 3, max_new_tokens=10, temperature=1.0, eos_id=eos, pad_id=bpe.pad_token_id,
                      generator=torch.Generator().manual_seed(0))

    eos = int(draw(-1).response_ids[:, :4].flatten().mode().values)  # a token some rows draw early, not all
    ro = draw(eos)  # the same draws, ended at that token: rows finish at different steps
    assert min(ro.response_lengths) <= 4 and max(ro.response_lengths) == 10
    with torch.no_grad():
        lp = forward.response_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
    torch.testing.assert_close(lp * ro.response_mask, ro.logprobs, atol=1e-4, rtol=0)
    steps = []
    for rows in (None, torch.tensor([2, 0])):  # dropping finished rows (and reordering) keeps the others' numbers
        logits, cache = forward.prefill(model, greedy.prompt_ids[:3], greedy.prompt_mask[:3], capacity=32)
        tokens = logits.argmax(-1)
        if rows is not None:
            cache, tokens = cache.select(rows), tokens[rows]
        steps.append(forward.decode_step(model, cache, tokens))
        steps.append(forward.decode_step(model, cache, steps[-1].argmax(-1)))
    torch.testing.assert_close(steps[2], steps[0][[2, 0]], atol=1e-5, rtol=0)
    torch.testing.assert_close(steps[3], steps[1][[2, 0]], atol=1e-5, rtol=0)


def test_prompts_go_through_the_chat_template_and_continue_a_response_prefix(chat_bpe):
    """With a chat template the model sees the user turn and the assistant header; `generate(prefixes=...)`
    continues response text already written (what Monte-Carlo step labels need) after that header."""
    model = tiny_model("qwen2", chat_bpe)
    prompt, prefix = TASK.examples("test", 1)[0].prompt, "12+3=15\n"
    templated = chat_bpe.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)
    assert encode_prompts(chat_bpe, [prompt])[0] == templated != chat_bpe(prompt, add_special_tokens=False).input_ids
    ids = templated + chat_bpe(prefix, add_special_tokens=False).input_ids
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    new, eos = ids[-6:], chat_bpe.eos_token_id
    want = chat_bpe.decode(new[:new.index(eos)] if eos in new else new)  # generate stops at EOS
    assert generate(model, chat_bpe, [prompt], temperature=0.0, max_new_tokens=6, prefixes=[prefix]) == [[want]]


def test_the_generic_critic_reads_every_token(bpe, qwen3, no_fast_path):
    """A critic on Qwen3's backbone: its per-token values equal the head on plain transformers' hidden states."""
    model, prompts, responses = qwen3
    critic = critic_from_policy(model)
    assert type(critic).__name__ == "Qwen3ForSequenceClassification" and not critic.score.weight.any()
    torch.nn.init.normal_(critic.score.weight)
    ids, attn, _ = pack(bpe, prompts, responses)
    with torch.no_grad():
        values = token_values(critic, ids, attn)
        for row in range(len(prompts)):
            real = attn[row].bool()
            want = critic.score(critic.model(input_ids=ids[row, real][None]).last_hidden_state)[0, :, 0]
            torch.testing.assert_close(values[row, real], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_the_shared_prompt_cache_equals_the_full_forward_values_and_gradients(bpe, arch):
    """Prompts longer than Mistral's sliding window (24), shared by several responses: the cached forward equals
    the full one, in values and in the gradients of every parameter; the critic reads the same hidden states."""
    model = tiny_model(arch, bpe).train()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, len(bpe), (3, 20), generator=g)
    pm = torch.ones(3, 20, dtype=torch.long)
    pm[0, :5] = 0
    rows = torch.tensor([0, 0, 1, 2, 2, 1])
    p_ids, p_mask = prompts[rows].masked_fill(pm[rows] == 0, 0), pm[rows]
    r_ids = torch.randint(3, len(bpe), (6, 9), generator=g)
    r_mask = torch.ones(6, 9, dtype=torch.long)
    r_mask[1, 4:] = 0
    weights = torch.randn(6, 9, generator=g) * r_mask
    grads = []
    for shared in (True, False):
        model.zero_grad()
        if shared:
            lp = forward.response_logprobs(model, p_ids, p_mask, r_ids, r_mask)
        else:
            ids, attn = torch.cat((p_ids, r_ids), 1), torch.cat((p_mask, r_mask), 1)
            lp = forward.token_logprobs(model, ids, attn)[:, 19:]
        (lp * weights).sum().backward()
        grads.append((lp.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0] * r_mask, grads[1][0] * r_mask, atol=1e-5, rtol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    critic = critic_from_policy(model.eval())
    torch.nn.init.normal_(critic.score.weight)
    ids, attn = torch.cat((p_ids, r_ids), 1), torch.cat((p_mask, r_mask), 1)
    with torch.no_grad():
        full = token_values(critic, ids, attn)[:, 19:-1]
        torch.testing.assert_close(response_values(critic, ids, attn, 20) * r_mask, full * r_mask, atol=1e-5, rtol=0)


def test_prm_step_ends_on_a_bpe_that_merges_the_newline_match_the_character_tokenizer(bpe):
    """Where '\\n' is merged with its neighbours ("=65\\nanswer: 6"), the step ends are found in the text: as many
    ends as steps, so the same labels as on the character tokenizer, each at the first token where its step is
    over (holding its newline), where the character tokenizer has the newline token itself."""
    _, chars = new_policy("nano", 0, 64)
    assert vocab(bpe).newline_id is None and vocab(chars).newline_id is not None
    examples = [StepExample(e.prompt, e.solution.split("\n"), [float((i + j) % 2) for j in range(2)])
                for i, e in enumerate(TASK.examples("test", 40))]
    texts = ["\n".join(e.steps) for e in examples]
    merged = [t for text in texts for t in bpe.convert_ids_to_tokens(bpe(text, add_special_tokens=False).input_ids)]
    assert sum("\u010a" in t and t != "\u010a" for t in merged) >= len(examples)  # byte-level "\n" inside a merge
    for tok in (chars, bpe):
        encoded = encode_steps(tok, examples, "x")
        for e, text, (seq, ends, labels) in zip(examples, texts, encoded):
            assert labels == e.labels and len(ends) == 2 and seq[ends[-1]] == tok.eos_token_id
            response = seq[len(encode_prompts(tok, [e.prompt])[0]):]
            upto = len(e.steps[0]) + 1  # the first step and its newline
            start = len(seq) - len(response)
            held, before = tok.decode(response[:ends[0] - start + 1]), tok.decode(response[:ends[0] - start])
            assert held.startswith(text[:upto]) and not before.startswith(text[:upto])
            if tok is chars:
                assert held == text[:upto]  # the newline token itself
    ids = torch.tensor([seq[-30:] for seq, _, _ in encode_steps(chars, examples, "x") if len(seq) >= 30])
    mask = torch.ones_like(ids)
    mask[::2, -3:] = 0  # truncated rows: their last token ends their last step
    fast = step_end_mask(chars, ids, mask)  # the tensor rule of the character tokenizer ...
    slow = torch.zeros_like(fast)
    for row in range(len(ids)):  # ... equals the text rule
        slow[row, step_end_positions([vocab(chars).pieces[i] for i in ids[row][mask[row].bool()].tolist()])] = True
    assert torch.equal(fast, slow) and fast.sum() > len(ids)


def test_an_outcome_rm_trained_elsewhere_loads_as_a_reward_source(bpe, tmp_path):
    """A `Qwen2ForSequenceClassification` (num_labels=1) saved by plain transformers, as TRL's RewardTrainer
    writes it, scores the policy's rollouts through `rl.reward.orm`: the scores equal its own HF forward."""
    torch.manual_seed(0)
    config = CONFIGS["qwen2"](vocab_size=len(bpe), num_labels=1, pad_token_id=bpe.pad_token_id)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "orm")
    bpe.save_pretrained(tmp_path / "orm")
    policy, tok = load_policy(save_tiny("qwen2", bpe, tmp_path / "policy"))
    cfg = RunConfig.model_validate({"rl": {"reward": {"orm": 1.0}, "orm_path": str(tmp_path / "orm")}})
    reward = build_reward(cfg.rl, TASK, tok, "cpu")
    examples = TASK.examples("test", 4)
    ro = sample(policy, encode_prompts(tok, [e.prompt for e in examples]), max_new_tokens=6,
                eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))
    got = reward(examples, tok.batch_decode(ro.response_ids, skip_special_tokens=True), ro).scores
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "orm").eval()
    with torch.no_grad():
        for row in range(len(examples)):
            real = ro.attention_mask[row].bool()
            want = hf(input_ids=ro.sequences[row, real][None]).logits[0, 0]
            assert abs(got[row].item() - want.item()) < 1e-4


def base_config(policy_path, **sections) -> RunConfig:
    data = {
        "threads": 1, "task": {"n_ops": 1}, "policy": {"path": str(policy_path)},
        "sft": {"steps": 30, "batch_size": 16, "lr": 3e-3, "warmup": 3, "n_examples": 200, "checkpoint_every": 0},
        "sampling": {"max_new_tokens": 16}, "eval": {"n_prompts": 8, "k": 2},
        "data": {"prompts": 12, "responses_per_prompt": 2, "heldout_prompts": 4, "mc_rollouts": 0},
        "rm": {"steps": 4, "batch_size": 8, "init": "policy", "labels": "gold"},
        "rl": {"steps": 2, "prompts_per_step": 4, "n_samples": 2, "n_train_prompts": 32, "eval_every": 0,
               "checkpoint_every": 0},
    }  # fmt: skip
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return RunConfig.model_validate(data)


def assert_policy_reloads_and_scores_as_plain_transformers(folder):
    """The saved policy loads with plain transformers, and the trainer's log-probs of its own greedy responses
    equal that plain forward's within 1e-4 (fp32)."""
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    policy, tok = load_policy(folder)
    examples = TASK.examples("test", 3)
    prompts = [e.prompt for e in examples] * 2
    responses = [e.solution for e in examples] + [e.solution[:4] for e in examples]
    ours = response_logprobs(policy, tok, prompts, responses, eos=True)
    if tok.chat_template:  # the prompt as a user turn, by transformers itself
        p_ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False) for p in prompts]
        assert tok.decode(p_ids[0]).startswith("<|user|>\n")
    else:
        p_ids = tok(prompts, add_special_tokens=False).input_ids
    for got, p, r in zip(ours, p_ids, responses):
        want = plain_logprobs(hf, p, tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id])
        assert len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want)) < 1e-4
    return ours


@pytest.mark.parametrize("arch, template", [("llama", False), ("qwen2", True), ("qwen3", False),
                                            ("mistral", False), ("gemma2", True)])
def test_a_checkpoint_of_each_architecture_through_every_stage(arch, template, bpe, chat_bpe, tmp_path):
    tok = chat_bpe if template else bpe
    start = save_tiny(arch, tok, tmp_path / "start")
    cfg = base_config(start)
    summary = sft.run(cfg, {}, tmp_path / "sft")
    losses = [json.loads(line)["sft/loss"] for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
              if "sft/loss" in json.loads(line)]
    assert losses[-1] < 0.6 * math.log(len(tok)), losses  # it learns the task's text (from ~ln V at the start)
    assert summary["policy/params"] > 0 and 0.0 <= summary["eval/pass@1"] <= 1.0
    before = assert_policy_reloads_and_scores_as_plain_transformers(tmp_path / "sft" / "policy")
    sample_stage.run(cfg, {"sft": str(tmp_path / "sft")}, tmp_path / "sample")
    label.run(cfg, {"sample": str(tmp_path / "sample")}, tmp_path / "label")
    rms = {}
    for kind in ("orm", "prm"):
        c = base_config(start, rm={"kind": kind, "init_path": str(tmp_path / "sft" / "policy"), "loss": "bce"})
        assert rm.run(c, {"label": str(tmp_path / "label")}, tmp_path / kind)["rm/init_from_policy"] == 1.0
        rms[kind] = load_reward_model(tmp_path / kind / "rm")
        assert rms[kind].kind == kind and type(rms[kind].model).__name__.lower().startswith(arch)
    assert_rms_score_as_plain_transformers(rms, tmp_path)
    runs = {"grpo": {"algorithm": "grpo", "reward": {"rule": 1.0, "prm": 0.5}, "prm_mode": "dense",
                     "prm_path": str(tmp_path / "prm" / "rm")},
            "ppo": {"algorithm": "ppo", "reward": {"rule": 1.0, "orm": 0.5}, "critic_init": "rm",
                    "orm_path": str(tmp_path / "orm" / "rm")}}
    for name, rl_cfg in runs.items():
        out = tmp_path / name
        summary = rl.run(base_config(start, rl=rl_cfg), {"sft": str(tmp_path / "sft")}, out)
        assert summary["rl/kl"] >= 0 and ("rl/reward_orm" in summary or "rl/reward_prm" in summary)
        after = assert_policy_reloads_and_scores_as_plain_transformers(out / "policy")
        assert after != before  # the update moved the policy
    summary = eval_stage.run(cfg, {"rl": str(tmp_path / "ppo")}, tmp_path / "eval")
    assert {"eval/pass@1", "eval/pass@2", "eval/maj@2"} <= set(summary)


def assert_rms_score_as_plain_transformers(rms, tmp_path):
    """The saved ORM and PRM load with plain transformers' Auto classes and score as our reading of them."""
    examples = TASK.examples("test", 3)
    prompts, responses = [e.prompt for e in examples], [e.solution for e in examples]
    hf = {"orm": AutoModelForSequenceClassification.from_pretrained(tmp_path / "orm" / "rm").eval(),
          "prm": AutoModelForTokenClassification.from_pretrained(tmp_path / "prm" / "rm").eval()}
    assert hf["prm"].config.step_split == "line" and hf["orm"].config.num_labels == 1
    ids, attn, response_mask = pack(rms["orm"].tok, prompts, responses)
    with torch.no_grad():
        ours = rms["orm"].score(ids, attn, response_mask)
        step_logits = rms["prm"].step_logits_texts(prompts, responses)
        for row in range(len(examples)):
            real = attn[row].bool()
            assert abs(hf["orm"](input_ids=ids[row, real][None]).logits[0, 0].item() - ours[row].item()) < 1e-4
            token_logits = hf["prm"](input_ids=ids[row, real][None]).logits[0, :, 0]
            R = int(response_mask[row].sum())
            ends = forward_step_ends(rms["prm"], ids[row, real][-R:])
            torch.testing.assert_close(token_logits[-R:][ends], step_logits[row], atol=1e-4, rtol=0)
            assert len(step_logits[row]) == 2  # "a+b=c" and "answer: c"


def forward_step_ends(rm_model, response_ids):
    from rlhfscale.models.steps import step_end_mask

    return step_end_mask(rm_model.tok, response_ids[None], torch.ones(1, len(response_ids)))[0]
