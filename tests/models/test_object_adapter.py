"""CoLVA's object adapter pieces against hand-computed values: mask → grid, mask pooling, the contrastive loss."""
from __future__ import annotations

import math

import pytest
import torch

from mllm_align.models.object_adapter import POOL_EPS, ObjectAdapter, mask_pool, masks_to_grid
from mllm_align.models.object_contrastive import object_contrastive_loss


def test_masks_to_grid_by_hand():
    m = torch.zeros(2, 8, 8, dtype=torch.bool)
    m[0, :4, :4] = True  # 8 -> 2: cell centres sample input 1.5 and 5.5: [[1, 0], [0, 0]]
    m[1, :, 0] = True  # one column of a 4-px-per-cell grid: 0.25 at most -> vanishes
    w, valid = masks_to_grid(m, 2, threshold=0.5)
    assert w[0].tolist() == [[1.0, 0.0], [0.0, 0.0]] and w[1].sum() == 0
    assert valid.tolist() == [True, False]
    half = torch.zeros(1, 4, 4)
    half[0, :, 0] = 1  # 4 -> 2: the left cells read 0.5 exactly: not above 0.5, above 0.45
    assert masks_to_grid(half, 2, 0.5)[1].tolist() == [False]
    assert masks_to_grid(half, 2, 0.45)[0][0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match=r'mask\(s\) \[0\] are empty'):
        masks_to_grid(torch.zeros(1, 4, 4), 2)
    with pytest.raises(ValueError, match='threshold'):
        masks_to_grid(m, 2, threshold=1.0)


def test_mask_pool_by_hand_and_after_the_adapter():
    f = torch.arange(8, dtype=torch.float64).reshape(2, 2, 2)  # cells (0,0)=[0,1] (0,1)=[2,3] (1,0)=[4,5] (1,1)=[6,7]
    w = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    out = mask_pool(f, w)
    assert out[0].tolist() == pytest.approx([2 / (2 + POOL_EPS), 4 / (2 + POOL_EPS)])
    assert out[1].tolist() == pytest.approx([6 / (1 + POOL_EPS), 7 / (1 + POOL_EPS)])
    torch.manual_seed(0)
    adapter = ObjectAdapter(2, 3)
    adapted = adapter(f.float())  # per cell
    assert adapted.shape == (2, 2, 3)
    mean_of_cells = (adapted[0, 0] + adapted[0, 1]) / 2
    assert torch.allclose(mask_pool(adapted, w.float())[0], mean_of_cells * 2 / (2 + POOL_EPS), atol=1e-6)
    with pytest.raises(ValueError, match='same grid'):
        mask_pool(f, torch.ones(1, 3, 3))
    assert mask_pool(f, torch.zeros(0, 2, 2, dtype=torch.float64)).shape == (0, 2)  # an image without objects


def test_contrastive_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    loss, n = object_contrastive_loss([a], [p])
    # a·p = [[1, 0], [0, 2]]: L_0 = log(1 + e^(0 - 1)), L_1 = log(1 + e^(0 - 2))
    assert n == 2 and float(loss) == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 2)
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    # an invalid object is neither anchor nor negative: one object left, no negative -> log(1) = 0
    single, n1 = object_contrastive_loss([a.detach()], [p.detach()], [torch.tensor([True, False])])
    assert n1 == 1 and float(single) == 0.0
    # two images: the mean over all valid anchors
    two, n2 = object_contrastive_loss([a.detach(), a.detach()[:1]], [p.detach(), p.detach()[:1]])
    assert n2 == 3 and float(two) == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 3)


def test_a_batch_without_a_valid_anchor_is_a_connected_zero():
    a = torch.randn(3, 4, requires_grad=True)
    p = torch.randn(3, 4, requires_grad=True)
    loss, n = object_contrastive_loss([a], [p], [torch.zeros(3, dtype=torch.bool)])
    assert n == 0 and float(loss) == 0.0 and loss.requires_grad
    loss.backward()
    assert a.grad is not None and float(a.grad.abs().sum()) == 0.0  # it ran, it moved nothing
    with pytest.raises(ValueError, match='one per image'):
        object_contrastive_loss([a], [p, p])
    with pytest.raises(ValueError, match='same K and H'):
        object_contrastive_loss([a], [p[:2]])


def test_separate_anchor_and_positive_flags_by_hand():
    # Object 1 vanished on the expert grid (no anchor) but has a view-2 embedding: still a negative of object 0.
    # Object 2 has no view-2 embedding: neither positive nor negative.
    a = torch.tensor([[1.0, 0.0], [5.0, 5.0], [0.0, 1.0]])
    p = torch.tensor([[2.0, 0.0], [1.0, 1.0], [9.0, 9.0]])
    loss, n = object_contrastive_loss([a], [p], [torch.tensor([True, False, True])],
                                      positive_valid=[torch.tensor([True, True, False])])
    # anchor 0 only: a0·p0 = 2, a0·p1 = 1 -> log(1 + e^(1 - 2))
    assert n == 1 and float(loss) == pytest.approx(math.log(1 + math.exp(-1.0)))
