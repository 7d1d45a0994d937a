"""Rollout throughput: a rollout backend against HF `generate`, side by side.

The backend is our KV-cache sampler (`native`) or the vLLM engine (`vllm`, holding a copy of the
same weights; its engine start is reported apart and not timed). Both sample (temperature 1, no top-k / top-p) the same prompts from the same
randomly initialised ladder model and produce exactly batch × new_tokens
tokens: EOS never ends a row early (HF: `min_new_tokens`; ours: an EOS id
outside the vocabulary; vLLM: `ignore_eos`), so the work is equal; the warm-up call of each side
checks that it is. HF runs under the faster of its attention implementations (`HF_ATTENTION`,
timed in the warm-up; `hf_attn`). Then the two are timed alternately, `repeats` times each;
`ratio_vs_hf` compares the best times, which damps the noise of a shared
machine, and `ratio_vs_hf_median` the medians.

`attention` says which decode attention our sampler ran (`models.decode_attention`: the fused CPU kernel, or
the eager ops where it could not be built).

`device` and `dtype` (float32 or bfloat16) say where and in what precision both sides run the model (a GPU run:
`--device cuda --dtype bfloat16 --size large`, the ladder's ≈0.5B); `peak_frac` is the fraction of the matmul
peak measured on that device in that dtype that the backend reaches, counting 2·N FLOPs per generated token with N the parameters that
take part in the per-token matmuls: the non-embedding parameters plus the
lm_head (the embedding lookup is a gather, not a matmul; attention over the
cache and the prompt prefill are left out, so the figure is slightly low).
"""

from __future__ import annotations

import random
import statistics
import time
from contextlib import ExitStack

import torch

from rlhfscale.bench import torch_threads
from rlhfscale.bench.peak import measure_matmul_peak
from rlhfscale.errors import BadInput
from rlhfscale.models import decode_attention
from rlhfscale.models.ladder import build_model, non_embedding_params
from rlhfscale.models.tokenizer import build_tokenizer
from rlhfscale.rollout.sampler import sample

HF_ATTENTION = ("sdpa", "eager")  # on one CPU thread at `micro`, eager measured 3-7% faster
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def arithmetic_prompts(batch: int, seed: int) -> list[list[int]]:
    """`batch` prompts of 10-16 tokens: BOS, then digits and operators ending in '='."""
    tok, rng = build_tokenizer(), random.Random(seed)
    texts = ["".join(rng.choice("0123456789+-*") for _ in range(rng.randint(8, 14))) + "=" for _ in range(batch)]
    return [[tok.bos_token_id, *tok.encode(text)] for text in texts]


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_rollout_bench(
    size: str = "micro",
    batch: int = 256,
    new_tokens: int = 32,
    seed: int = 0,
    device: str = "cpu",
    repeats: int = 5,
    threads: int | None = None,
    backend: str = "native",
    dtype: str = "float32",
) -> dict:
    """Time a rollout backend (`native` or `vllm`) and HF `generate` on the same work; tokens per second and
    their ratio.

    `threads` sets torch's CPU thread count for the run (None: leave it as it is).
    """
    if backend not in BACKENDS:
        raise BadInput(f"bench rollout --backend: expected one of {', '.join(BACKENDS)}, found {backend!r}")
    if dtype not in DTYPES:
        raise BadInput(f"bench rollout --dtype: expected one of {', '.join(DTYPES)}, found {dtype!r}")
    try:
        device = torch.device(device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise BadInput(f"bench rollout --device: expected a device this machine has, found {str(device)!r} "
                       f"({str(error).splitlines()[0]})") from None
    with torch_threads(threads, "bench rollout"), ExitStack() as stack:
        return _bench(size, batch, new_tokens, seed, device, DTYPES[dtype], repeats, backend, stack)


def _native(model, tok, prompts, new_tokens, seed, device, stack):
    """Our sampler as a function of no arguments returning the number of tokens it generated (it starts no
    engine, so it leaves `stack` alone)."""
    def ours() -> int:
        generator = torch.Generator(device).manual_seed(seed)
        ro = sample(model, prompts, max_new_tokens=new_tokens, eos_id=-1, pad_id=tok.pad_token_id, generator=generator)
        return int(ro.response_mask.sum())

    return ours, {}


def _vllm(model, tok, prompts, new_tokens, seed, device, stack):
    """The vLLM engine, holding a copy of `model`, as a function returning the number of tokens it generated;
    and the seconds its start took. The engine stops when `stack` (an `ExitStack`) closes."""
    from rlhfscale.rollout.vllm_engine import VLLMEngine, require_vllm

    vllm, start = require_vllm(), time.perf_counter()
    engine = stack.enter_context(VLLMEngine(model, tok, max_len=max(map(len, prompts)) + new_tokens, seed=seed,
                                            dtype=str(model.dtype).removeprefix("torch.")))
    started = time.perf_counter() - start
    params = vllm.SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=1.0,
                                 seed=seed)
    requests = [{"prompt_token_ids": p} for p in prompts]

    def theirs() -> int:
        engine.llm.reset_prefix_cache()  # every call prefills, as ours and HF's do
        outputs = engine.llm.generate(requests, params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outputs)

    return theirs, {"engine_start_s": started}


BACKENDS = {"native": _native, "vllm": _vllm}


def _fastest_attention(model, hf, tries: int = 2) -> str:
    """The attention implementation in `HF_ATTENTION` under which `hf()` (generate) runs fastest, best of
    `tries` calls each; it is left set on `model`."""
    best = {}
    for name in HF_ATTENTION:
        model.set_attn_implementation(name)
        best[name] = min(_seconds(hf) for _ in range(tries))
    fastest = min(best, key=best.get)
    model.set_attn_implementation(fastest)
    return fastest


def _bench(size, batch, new_tokens, seed, device, dtype, repeats, backend, stack) -> dict:
    """The measurement of `run_rollout_bench`, at the current thread count; the backend's engine, if it has
    one, stops when `stack` closes."""
    tok = build_tokenizer()
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    model = build_model(size, len(tok), seed=seed, **ids).to(device, dtype).eval()
    prompts = arithmetic_prompts(batch, seed)
    ours, extra = BACKENDS[backend](model, tok, prompts, new_tokens, seed, device, stack)

    hf_inputs = tok.pad([{"input_ids": p} for p in prompts], return_tensors="pt").to(device)
    hf_kwargs = dict(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip

    def hf():
        torch.manual_seed(seed)
        with torch.inference_mode():
            return model.generate(**hf_inputs, **hf_kwargs)

    tokens = batch * new_tokens
    generated = (ours(), hf().shape[1] - hf_inputs["input_ids"].shape[1])  # warm-up
    if generated != (tokens, new_tokens):
        raise RuntimeError(f"rollout bench: expected {tokens} tokens, {new_tokens} per row; found {generated}")
    hf_attn = _fastest_attention(model, hf)
    ours_s, hf_s = [], []
    for _ in range(repeats):
        ours_s.append(_seconds(ours))
        hf_s.append(_seconds(hf))
    params = non_embedding_params(size) + model.lm_head.weight.numel()
    peak = measure_matmul_peak(device, dtype)
    return {
        "backend": backend,
        "size": size,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "params": params,
        "ours_tok_s": tokens / min(ours_s),
        "hf_tok_s": tokens / min(hf_s),
        "hf_attn": hf_attn,
        "ratio_vs_hf": min(hf_s) / min(ours_s),
        "ratio_vs_hf_median": statistics.median(hf_s) / statistics.median(ours_s),
        "peak_flops": peak,
        "peak_frac": 2 * params * tokens / min(ours_s) / peak,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "attention": "fused" if decode_attention.uses_fused(device) else "eager",
        **extra,
    }
