"""The math-mini task of the registry takes as many problems as exist (one operation, small numbers)."""

import re

from rlhfscale.config import RunConfig
from rlhfscale.tasks import make_task
from rlhfscale.tasks.math_gen import miniature_task


def build(**task):
    return make_task(RunConfig.model_validate({"task": {"name": "math-mini", **task}}).task)


def test_one_operation_on_small_numbers_builds_every_problem_there_is():
    task = build(n_ops=1, max_value=20)
    train, test = task.examples("train", 10**6), task.examples("test", 10**6)
    assert (len(train), len(test)) == (521, 117)
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    numbers = [int(n) for e in train + test for n in re.findall(r"\d+", e.solution)]
    assert max(numbers) == 20 and len(build(n_ops=1).examples("train", 10**6)) == 1284


def test_the_default_problems_are_those_of_miniature_task():
    ours, theirs = build(), miniature_task()
    assert ours.examples("train", 4000) == theirs.examples("train", 4000)
    assert ours.examples("test", 400) == theirs.examples("test", 400)
