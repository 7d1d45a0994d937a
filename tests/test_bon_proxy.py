"""The bon stage's proxy curve: what the over-optimization checks plot against the gold one."""

import pytest
import torch

from rlhfscale.stages.bon import proxy_curve


def test_the_bon_stage_reports_the_proxy_score_of_its_pick():
    """``bon/<rm>_proxy@N``: the expected RM score of the response the RM picks among N of the pool (its
    expected maximum over N-subsets), 1 = the pool's mean, n_max = the pool's maximum."""
    scores = torch.tensor([[0.0, 1.0, 3.0, 2.0], [1.0, 1.0, 1.0, 5.0]], dtype=torch.float64)
    found = proxy_curve("orm", scores, [1, 2, 4])
    assert found["bon/orm_proxy@1"] == pytest.approx((1.5 + 2.0) / 2)  # the pools' means
    pairs = [max(a, b) for row in scores.tolist() for i, a in enumerate(row) for b in row[i + 1:]]
    assert found["bon/orm_proxy@2"] == pytest.approx((sum(pairs[:6]) / 6 + sum(pairs[6:]) / 6) / 2)
    assert found["bon/orm_proxy@4"] == pytest.approx(4.0)
