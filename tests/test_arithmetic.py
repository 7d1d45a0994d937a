from rlhfscale.tasks.arithmetic import ArithmeticTask


def test_gold_solution_is_left_to_right_and_verified():
    task = ArithmeticTask()
    ex = task._example("compute 45+4-3\n", [45, 4, 3], ["+", "-"])
    assert ex.solution == "45+4=49\n49-3=46\nanswer: 46"
    assert ex.answer == "46"
    assert task.score(ex, ex.solution) == 1.0
    assert task.score(ex, "45+4=49\n49-3=45\nanswer: 45") == 0.0
    assert task.score(ex, "no answer here") == 0.0


def test_step_labels_mark_the_first_error_and_everything_after():
    task = ArithmeticTask()
    ex = task._example("45+4-3=?\n", [45, 4, 3], ["+", "-"])
    assert task.step_labels(ex, ex.solution) == [True, True, True]
    assert task.step_labels(ex, "45+4=48\n48-3=45\nanswer: 45") == [False, False, False]
    assert task.step_labels(ex, "45+4=49\n49-3=45\nanswer: 45") == [True, False, False]
    # right arithmetic on the wrong operand is still wrong: it is not consistent with the problem
    assert task.step_labels(ex, "45+4=49\n49-4=45\nanswer: 45") == [True, False, False]
    # a skipped step makes the answer line wrong even if the final number were right
    assert task.step_labels(ex, "45+4=49\nanswer: 46") == [True, False]
    # lines after the first answer line are not steps
    assert task.split_steps("1+2=3\nanswer: 3\njunk") == ["1+2=3", "answer: 3"]


def test_splits_are_disjoint_deterministic_and_distinct():
    task = ArithmeticTask(n_templates=8)
    train = task.examples("train", 3000)
    test = task.examples("test", 300)
    assert task.examples("test", 300) == test
    expr = lambda e: (e.meta["operands"], e.meta["ops"])  # noqa: E731
    assert not {expr(e) for e in train} & {expr(e) for e in test}
    assert len({expr(e) for e in train}) == 3000
    assert len({e.prompt.replace(e.prompt.strip(), "") for e in train}) == 1  # every prompt ends with "\n"
    assert all(e.prompt.endswith("\n") for e in test)


def test_templates_knob_sets_prompt_diversity():
    one = ArithmeticTask(n_templates=1).examples("train", 200)
    four = ArithmeticTask(n_templates=4).examples("train", 200)
    shape = lambda e: "".join("#" if c.isdigit() or c in "+-*" else c for c in e.prompt)  # noqa: E731
    assert len({shape(e).replace("#", "") for e in one}) == 1
    assert len({shape(e).replace("#", "") for e in four}) == 4


def test_sampling_budget_fits_the_longest_gold_solution():
    for task in [ArithmeticTask(), ArithmeticTask(n_ops=4, digits=2, operators="+-*")]:
        longest = max(len(e.solution) for e in task.examples("train", 3000))
        assert longest <= task.max_solution_chars()
