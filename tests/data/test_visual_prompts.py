"""Visual prompts: contours in the right colours, ID tags at the objects' centroids, seeded IDs, options, errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mllm_align.data.visual_prompts import (
    MAX_CANDIDATES,
    NAMED_COLOURS,
    assign_ids,
    candidate_colours,
    decode_mask,
    draw_candidates,
    draw_query,
    options_for_ids,
)
from mllm_align.metrics.mmvm import NONE_OPTION


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_contours_and_tags_where_expected():
    image = Image.new('RGB', (120, 80), (128, 128, 128))
    masks = [_disc(80, 120, 40, 30, 15), _disc(80, 120, 40, 90, 15)]
    out = np.asarray(draw_candidates(image, masks, ids=[2, 1]))
    colours = candidate_colours(2)
    # object 0 carries ID 2: its ring has colour #2, object 1's ring colour #1 (the colour goes with the ID)
    assert tuple(out[40, 30 + 16]) == colours[1][1] and tuple(out[40, 90 + 16]) == colours[0][1]
    # the tag box sits at each centroid: the box colour and white digit pixels there, the grey image elsewhere
    for cx, colour in ((30, colours[1][1]), (90, colours[0][1])):
        patch = out[34:47, cx - 5:cx + 6].reshape(-1, 3)
        assert any(tuple(p) == colour for p in patch) and any(p.min() > 200 for p in patch)
    assert tuple(out[5, 5]) == (128, 128, 128)
    q = np.asarray(draw_query(image, masks[0]))
    assert tuple(q[40, 30 + 16]) == NAMED_COLOURS['cyan'] and tuple(q[40, 90 + 16]) == (128, 128, 128)


def test_colours_distinct_not_white_not_the_query_and_seeded_ids():
    cols = candidate_colours(MAX_CANDIDATES, exclude=('cyan',))
    assert len({c for _, c in cols}) == MAX_CANDIDATES and all(min(c) <= 200 for _, c in cols)
    assert 'cyan' not in {n for n, _ in cols}
    assert assign_ids(6, np.random.default_rng(3)) == assign_ids(6, np.random.default_rng(3))
    assert sorted(assign_ids(6, np.random.default_rng(3))) == [1, 2, 3, 4, 5, 6]
    assert options_for_ids(3) == {'A': '1', 'B': '2', 'C': '3', 'D': NONE_OPTION}
    with pytest.raises(ValueError, match='1 to 25'):
        assign_ids(26, np.random.default_rng(0))
    with pytest.raises(ValueError, match='1 to 25'):
        options_for_ids(0)


def test_bad_masks_are_named():
    image = Image.new('RGB', (40, 30))
    good = _disc(30, 40, 15, 20, 5)
    with pytest.raises(ValueError, match=r'candidate 1: mask \(40, 20\) is not the image size \(40, 30\)'):
        draw_candidates(image, [good, np.ones((20, 40), bool)], [1, 2])
    with pytest.raises(ValueError, match='candidate 0: the mask is empty'):
        draw_candidates(image, [np.zeros((30, 40), bool)], [1])
    with pytest.raises(ValueError, match='not a permutation'):
        draw_candidates(image, [good, good], [1, 3])
    with pytest.raises(ValueError, match='colour'):
        draw_query(image, good, colour='ultraviolet')
    with pytest.raises(ValueError, match='outside'):
        decode_mask([[0, 0, 90, 0, 90, 9]], 30, 40)
    assert decode_mask([[2, 2, 12, 2, 12, 12, 2, 12]], 30, 40)[5, 5]


@pytest.mark.real_assets
def test_gallery_tool_redraws_the_mini_bench(tmp_path):
    from mllm_align.testing.real_assets import prepared
    from mllm_align.testing.tools import load_tool

    bench = prepared('mmvm_mini')
    tool = load_tool('render_visual_prompts')
    assert tool.main([str(bench), '--out', str(tmp_path / 'g.png'), '--limit', '3', '--height', '100']) == 0
    assert Image.open(tmp_path / 'g.png').size[1] == 3 * 108
    assert tool.main([str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'x.png')]) == 1
