"""A score v1 against hand-worked cases and a float64 loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mllm_align.metrics.alignment import a_score_v1


def test_hand_worked():
    # target tokens e0 and (e0 + e1)/√2; reference tokens e1 only: cosines 0 and 1/√2 → mean 1/(2√2)
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    ref = torch.tensor([[0.0, 3.0]])
    assert a_score_v1([t], [[ref]]) == pytest.approx(1 / (2 * math.sqrt(2)), abs=1e-6)
    # a second reference [e0]: cosines 1 and 1/√2 → 0.8536; the mean over the references
    both = a_score_v1([t], [[ref], [torch.tensor([[2.0, 0.0]])]])
    assert both == pytest.approx((1 / (2 * math.sqrt(2)) + (1 + 1 / math.sqrt(2)) / 2) / 2, abs=1e-6)


def test_self_is_one_and_loop_reference():
    gen = torch.Generator().manual_seed(0)
    target = [torch.randn(p, 8, generator=gen) for p in (5, 9, 4)]
    assert a_score_v1(target, [target]) == pytest.approx(1.0, abs=1e-6)
    refs = [[torch.randn(q, 8, generator=gen) for q in (3, 7, 6)] for _ in range(2)]
    want = []
    for ref in refs:
        per = []
        for t, r in zip(target, ref):
            t64, r64 = t.double().numpy(), r.double().numpy()
            per.append(np.mean([max(a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in r64) for a in t64]))
        want.append(np.mean(per))
    assert a_score_v1(target, refs) == pytest.approx(np.mean(want), abs=1e-6)


@pytest.mark.parametrize('target,refs,match', [
    ([], [[]], 'at least one image'),
    ([torch.ones(2, 3)], [], 'at least one reference'),
    ([torch.ones(2, 3)], [[torch.ones(2, 3), torch.ones(2, 3)]], 'same images'),
    ([torch.ones(2, 3)], [[torch.ones(2, 4)]], 'one D'),
    ([torch.ones(0, 3)], [[torch.ones(2, 3)]], 'no tokens'),
    ([torch.full((2, 3), float('nan'))], [[torch.ones(2, 3)]], 'NaN'),
])
def test_bad_input(target, refs, match):
    with pytest.raises(ValueError, match=match):
        a_score_v1(target, refs)
