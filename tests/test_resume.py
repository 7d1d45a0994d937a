"""A long stage killed mid-way resumes from its checkpoint and ends as the uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from rlhfscale.models.checkpoint import Checkpointer
from rlhfscale.models.io import new_policy
from rlhfscale.models.train import encode_pairs, sft_loop
from rlhfscale.pipeline import GRAPH
from rlhfscale.study.commands import validate
from rlhfscale.study.runner import collect_metrics, run_study
from rlhfscale.tasks.arithmetic import ArithmeticTask

TIMING = ("wall_s", "samples_per_s", "tokens_per_s", "gen_frac")  # clock readings, not results


class Killed(Exception):
    pass


def test_sft_loop_resumes_to_the_uninterrupted_weights(tmp_path):
    examples = ArithmeticTask().examples("train", 64)

    def train(checkpoint, kill_at=None):
        model, tok = new_policy("nano", 0, 64)
        pairs = encode_pairs(tok, [e.prompt for e in examples], [e.solution for e in examples])

        def on_step(step, loss, lr):
            if step == kill_at:
                raise Killed

        losses = sft_loop(model, pairs, steps=12, batch_size=8, lr=3e-3, warmup=2, weight_decay=0.0,
                          pad_id=tok.pad_token_id, seed=0, on_step=on_step, checkpoint=checkpoint)
        return model, losses

    whole, whole_losses = train(None)
    ckpt = Checkpointer(tmp_path / "ckpt", every=4, fingerprint="a")
    try:
        train(ckpt, kill_at=7)
    except Killed:
        pass
    assert torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)["step"] == 4
    resumed, losses = train(ckpt)
    assert losses == whole_losses
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    other = Checkpointer(tmp_path / "ckpt", every=4, fingerprint="other settings")
    assert other.load() is None  # a state of other settings is never resumed


STUDY = {
    "name": "resume",
    "base": {"policy": {"size": "nano", "max_len": 64},
             "sft": {"steps": 40, "batch_size": 32, "lr": 3e-3, "n_examples": 200, "warmup": 5},
             "rl": {"steps": 12, "prompts_per_step": 8, "n_samples": 2, "n_train_prompts": 64, "eval_every": 4,
                    "checkpoint_every": 2, "lr": 1e-3},
             "eval": {"n_prompts": 16, "k": 2}},
    "seeds": [0],
}


def write(folder: Path) -> Path:
    folder.mkdir(parents=True)
    path = folder / "study.yaml"
    path.write_text(json.dumps(STUDY))
    return path


def results(path: Path) -> tuple[list[dict], list[dict]]:
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith(TIMING)} for r in rows]  # noqa: E731
    return (strip(collect_metrics(path, validate=validate, pipeline=GRAPH)),
            strip(collect_metrics(path, validate=validate, pipeline=GRAPH, curves=True)))


def rl_step_logged(store: Path) -> int:
    """The last step the running rl stage has logged (0 before it starts)."""
    logs = list(store.glob("rl/.partial-*/metrics.jsonl"))
    rows = [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()] if logs else []
    return max((r["step"] for r in rows), default=0)


def test_sigkill_mid_rl_then_study_run_resumes_to_the_uninterrupted_metrics(tmp_path):
    whole = write(tmp_path / "whole")
    assert run_study(whole, validate=validate, pipeline=GRAPH, max_workers=1, progress=False).ok

    killed = write(tmp_path / "killed")
    store = killed.parent / "store"
    kill_after = random.Random().randint(3, 9)
    code = (f"from rlhfscale.study.runner import run_study; from rlhfscale.pipeline import GRAPH; "
            f"from rlhfscale.study.commands import validate; "
            f"run_study({str(killed)!r}, validate=validate, pipeline=GRAPH, max_workers=1, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 300
    while rl_step_logged(store) < kill_after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (partial,) = store.glob("rl/.partial-*")
    saved = torch.load(partial / "checkpoint" / "state.pt", weights_only=True)["step"]
    assert 2 <= saved < 12 and not list(store.glob("rl/[!.]*"))  # killed mid-RL, with a checkpoint

    resumed = run_study(killed, validate=validate, pipeline=GRAPH, max_workers=1, progress=False)
    assert resumed.ok and [stage for stage, _ in resumed.ran] == ["rl"]
    (artifact,) = store.glob("rl/[!.]*")
    log = [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("resumed_from") == saved for row in log)
    assert [r["step"] for r in log if "rl/reward" in r] == list(range(1, 13))  # every step once
    assert results(killed) == results(whole)


def test_the_same_key_gives_the_same_numbers_whatever_max_workers(tmp_path):
    spec = {**STUDY, "base": {**STUDY["base"], "rl": {"enabled": False}}, "axes": {"sft.lr": [2e-3, 3e-3]}}
    paths = []
    for workers in (1, 2):
        folder = tmp_path / f"workers{workers}"
        folder.mkdir()
        (folder / "study.yaml").write_text(json.dumps(spec))
        assert run_study(folder / "study.yaml", validate=validate, pipeline=GRAPH, max_workers=workers,
                         progress=False).ok
        paths.append(folder / "study.yaml")
    assert results(paths[0]) == results(paths[1])
