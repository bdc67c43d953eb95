"""PCK of one pair against hand-worked cases and a per-keypoint float64 loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mllm_align.metrics.correspondence import (
    NoVisibleKeypoints,
    from_canvas,
    pck_pair,
    pck_pair_counts,
    predict_matches,
    to_canvas,
)


def _one_hot_grid(order):
    """[4, 2, 2]: cell k (row-major) holds the basis vector e_order[k]."""
    f = torch.zeros(4, 2, 2)
    for k, e in enumerate(order):
        f[e, k // 2, k % 2] = 1
    return f


def test_letterbox_and_stretch_mapping_by_hand():
    # 420×210 on an 840 canvas: letterbox scale 2, centred vertically (offset (840 − 420) / 2 = 210)
    np.testing.assert_allclose(to_canvas([[10, 20]], (420, 210), 'letterbox'), [[20, 250]])
    np.testing.assert_allclose(to_canvas([[10, 20]], (420, 210), 'stretch'), [[20, 80]])
    np.testing.assert_allclose(to_canvas([[0, 0], [300, 100]], (300, 600), 'letterbox', canvas=600),
                               [[150, 0], [450, 100]])
    for layout in ('letterbox', 'stretch'):
        xy = np.array([[3.5, 7.25], [400, 1]])
        np.testing.assert_allclose(from_canvas(to_canvas(xy, (420, 210), layout), (420, 210), layout), xy)
    with pytest.raises(ValueError, match='layout'):
        to_canvas([[0, 0]], (10, 10), 'pad')


def test_argmax_by_hand():
    src = _one_hot_grid([0, 1, 2, 3])
    trg = _one_hot_grid([3, 2, 1, 0])  # target cell 3 looks like source cell 0, …
    # 840×840 images: the canvas is the image. Source keypoints in cells 0 and 1.
    kps_src = [[100, 100], [700, 50]]
    # predicted: cell 3 centre (630, 630) and cell 2 centre (210, 630); threshold 0.1 × 840 = 84
    kps_trg = [[600, 600], [300, 700]]  # 42.4 px away: hit; 114 px away: miss
    hits, n = pck_pair_counts(src, trg, kps_src, kps_trg, [True, True], (840, 840), (840, 840), [0, 0, 840, 840])
    assert (hits, n) == (1, 2)
    assert pck_pair(src, trg, kps_src, kps_trg, [True, True], (840, 840), (840, 840), [0, 0, 840, 840]) == 0.5
    # a bigger box doubles the threshold: both hit
    assert pck_pair(src, trg, kps_src, kps_trg, [True, True], (840, 840), (840, 840), [0, 0, 840, 1680],
                    alpha=0.10) == 1.0
    # invisible keypoints do not count
    assert pck_pair(src, trg, kps_src, kps_trg, [False, True], (840, 840), (840, 840), [0, 0, 840, 840]) == 0.0


def test_letterbox_target_maps_back_to_original_pixels():
    src = _one_hot_grid([0, 1, 2, 3])
    trg = _one_hot_grid([3, 2, 1, 0])
    # target 420×210: letterbox s = 2, oy = 210. Predicted canvas (630, 630) → pixels (315, 210).
    # box 100 wide → threshold 10 px. A target keypoint at (320, 205) is 7.1 px away: hit; (330, 210): 15 px: miss.
    args = dict(size_src=(840, 840), size_trg=(420, 210), bbox_trg=[0, 0, 100, 50])
    assert pck_pair(src, trg, [[100, 100]], [[320, 205]], [True], **args) == 1.0
    assert pck_pair(src, trg, [[100, 100]], [[330, 210]], [True], **args) == 0.0
    # with stretch the same prediction is (630 / 2, 630 / 4) = (315, 157.5) in pixels
    assert pck_pair(src, trg, [[100, 100]], [[315, 160]], [True], layout='stretch', **args) == 1.0
    assert pck_pair(src, trg, [[100, 100]], [[320, 205]], [True], layout='stretch', **args) == 0.0


def test_window_soft_argmax_by_hand():
    # 4×4 grid, 2 channels. The query (source cell (0, 0)) is e0. Target: cell (1, 1) = e0 (cos 1),
    # cell (1, 2) = (0.98, sin) (cos 0.98), every other cell e1 (cos 0): weights ∝ exp(cos / 0.02).
    src = torch.zeros(2, 4, 4)
    src[1] = 1
    src[:, 0, 0] = torch.tensor([1.0, 0.0])
    trg = torch.zeros(2, 4, 4)
    trg[1] = 1
    trg[:, 1, 1] = torch.tensor([1.0, 0.0])
    trg[:, 1, 2] = torch.tensor([0.98, math.sqrt(1 - 0.98 ** 2)])
    xy = torch.tensor([[[50.0, 50.0]]])  # canvas 840, cell 210: source cell (0, 0)
    pred = predict_matches(src[None], trg[None], xy, match='window-soft-argmax')[0, 0].double()
    w = math.exp(-1)  # exp((0.98 − 1) / 0.02); the cos-0 cells weigh exp(−50) ≈ 2e-22 relative
    assert pred[0].item() == pytest.approx((315 + w * 525) / (1 + w), abs=1e-3)
    assert pred[1].item() == pytest.approx(315, abs=1e-3)
    argmax = predict_matches(src[None], trg[None], xy, match='argmax')[0, 0]
    assert argmax.tolist() == [315.0, 315.0]
    # radius 0: the window is the argmax cell alone
    r0 = predict_matches(src[None], trg[None], xy, match='window-soft-argmax', window_radius=0)[0, 0]
    assert r0.tolist() == pytest.approx([315.0, 315.0])


def _loop_reference(fs, ft, kps_src, kps_trg, visible, size_src, size_trg, bbox, alpha, layout, canvas=840):
    """Per-keypoint float64 loop, written from the definition."""
    C, P, _ = fs.shape
    fs, ft = fs.double().numpy(), ft.double().numpy()
    cell = canvas / P
    hits = 0
    for k in np.flatnonzero(visible):
        x, y = to_canvas(np.array([kps_src[k]]), size_src, layout)[0]
        q = fs[:, min(int(y // cell), P - 1), min(int(x // cell), P - 1)]
        best, best_sim = None, -np.inf
        for i in range(P):
            for j in range(P):
                t = ft[:, i, j]
                sim = q @ t / (np.linalg.norm(q) * np.linalg.norm(t))
                if sim > best_sim:
                    best, best_sim = (i, j), sim
        pred = from_canvas(np.array([[(best[1] + 0.5) * cell, (best[0] + 0.5) * cell]]), size_trg, layout)[0]
        thr = alpha * max(bbox[2] - bbox[0], bbox[3] - bbox[1])
        hits += np.linalg.norm(pred - np.asarray(kps_trg[k])) < thr
    return hits / int(np.sum(visible))


@pytest.mark.parametrize('layout', ['letterbox', 'stretch'])
def test_argmax_matches_loop_reference(layout):
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        fs, ft = torch.randn(8, 6, 6, generator=gen), torch.randn(8, 6, 6, generator=gen)
        size_src, size_trg = (300, 200), (250, 400)
        kps_src = rng.uniform([0, 0], size_src, (12, 2))
        kps_trg = rng.uniform([0, 0], size_trg, (12, 2))
        visible = rng.random(12) < 0.8
        visible[0] = True
        bbox = [10, 20, 200, 380]
        got = pck_pair(fs, ft, kps_src, kps_trg, visible, size_src, size_trg, bbox, alpha=0.3, layout=layout)
        want = _loop_reference(fs, ft, kps_src, kps_trg, visible, size_src, size_trg, bbox, 0.3, layout)
        assert got == pytest.approx(want)


def test_batched_equals_one_pair_at_a_time():
    gen = torch.Generator().manual_seed(1)
    fs, ft = torch.randn(3, 5, 7, 7, generator=gen), torch.randn(3, 5, 7, 7, generator=gen)
    xy = torch.rand(3, 9, 2, generator=gen) * 840
    for match in ('argmax', 'window-soft-argmax'):
        batched = predict_matches(fs, ft, xy, match=match)
        for b in range(3):
            torch.testing.assert_close(batched[b], predict_matches(fs[b:b + 1], ft[b:b + 1], xy[b:b + 1],
                                                                   match=match)[0])


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(visible=[False, False]), NoVisibleKeypoints, 'no keypoint is visible'),
    (dict(kps_src=[[900, 10], [1, 1]]), ValueError, r'source keypoint\(s\) \[0\] lie outside'),
    (dict(kps_trg=[[1, 1], [1, -3]]), ValueError, r'target keypoint\(s\) \[1\] lie outside'),
    (dict(feat_trg=torch.zeros(4, 3, 3)), ValueError, 'grids differ'),
    (dict(feat_src=torch.zeros(4, 2, 3)), ValueError, 'square grid'),
    (dict(feat_src=torch.full((4, 2, 2), float('nan'))), ValueError, 'NaN'),
    (dict(bbox_trg=[5, 5, 5, 10]), ValueError, 'bbox'),
])
def test_bad_input(kwargs, exc, match):
    args = dict(feat_src=_one_hot_grid([0, 1, 2, 3]), feat_trg=_one_hot_grid([0, 1, 2, 3]),
                kps_src=[[1, 1], [2, 2]], kps_trg=[[1, 1], [2, 2]], visible=[True, True],
                size_src=(840, 840), size_trg=(840, 840), bbox_trg=[0, 0, 10, 10])
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        pck_pair(**args)
