"""The C score end to end: SPair-format pairs, a vision representation, batched scoring vs one pair at a time."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mllm_align.data.spair import load_spair_pairs
from mllm_align.evaluation.c_score import c_score, extract_feature_grids
from mllm_align.metrics.correspondence import pck_pair_counts
from mllm_align.testing.spair import write_synthetic_spair


class PatchColour(nn.Module):
    """A fixed 'representation': the mean colour of each cell of an 8×8 grid, plus a random projection."""

    def __init__(self, grid=8):
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(3 * 4, 16)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, pixel_values):
        x = nn.functional.adaptive_avg_pool2d(pixel_values, 2 * self.grid)  # (N, 3, 2g, 2g)
        n = x.shape[0]
        x = x.view(n, 3, self.grid, 2, self.grid, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, self.grid ** 2, 12)
        return self.proj(x)  # (N, g², 16), row-major


class Processor:
    image_mean = [0.5, 0.5, 0.5]

    def __call__(self, images, return_tensors='pt'):
        arr = np.stack([np.asarray(im.convert('RGB').resize((64, 64)), dtype=np.float32) / 255 for im in images])
        return {'pixel_values': torch.from_numpy(arr).permute(0, 3, 1, 2) - 0.5}


@pytest.fixture(scope='module')
def pairs(tmp_path_factory):
    root = write_synthetic_spair(tmp_path_factory.mktemp('spair'), categories=('cat', 'dog'), pairs_per_category=3)
    return load_spair_pairs(root)


@pytest.mark.parametrize('convention,layout', [('geoaware', 'letterbox'), ('law-repo', 'stretch')])
@pytest.mark.parametrize('match', ['argmax', 'window-soft-argmax'])
def test_batched_equals_pair_by_pair(pairs, convention, layout, match):
    enc, proc = PatchColour(), Processor()
    result = c_score(enc, proc, pairs, convention=convention, match=match, batch_size=4, device='cpu', alpha=0.15)
    grids = extract_feature_grids(enc, proc, [p for q in pairs for p in (q.src_image, q.trg_image)], convention)
    counts = [pck_pair_counts(grids[p.src_image], grids[p.trg_image], p.kps_src, p.kps_trg, p.visible, p.size_src,
                              p.size_trg, p.bbox_trg, alpha=0.15, match=match, layout=layout) for p in pairs]
    assert result.pck == pytest.approx(np.mean([h / n for h, n in counts]))
    assert result.hits == sum(h for h, _ in counts) and result.keypoints == sum(n for _, n in counts)
    cat = [c for c, p in zip(counts, pairs) if p.category == 'cat']
    assert result.per_category['cat'] == pytest.approx(np.mean([h / n for h, n in cat]))
    pooled = c_score(enc, proc, pairs, convention=convention, match=match, average='keypoint', alpha=0.15)
    assert pooled.pck == pytest.approx(result.hits / result.keypoints)


def test_texture_features_beat_chance_and_skip_invisible(pairs):
    enc, proc = PatchColour(grid=16), Processor()
    result = c_score(enc, proc, pairs, alpha=0.2)
    # the same texture, scaled and shifted: colour patches match far above features that ignore the image
    noise = c_score(lambda pv: torch.randn(pv.shape[0], 256, 16, generator=torch.Generator().manual_seed(pv.shape[0])),
                    proc, pairs, alpha=0.2)
    assert result.pck > 0.5 > 3 * noise.pck
    hidden = [type(p)(**{**p.__dict__, 'visible': np.zeros_like(p.visible)}) if i == 0 else p
              for i, p in enumerate(pairs)]
    skipped = c_score(enc, proc, hidden, alpha=0.2)
    assert skipped.skipped == 1 and skipped.pairs == len(pairs) - 1


def test_tiny_vision_tower(pairs, tiny_assets):
    from mllm_align.models import VisionTower
    from mllm_align.models.builders import load_image_processor

    path = tiny_assets.vision('dinov2')
    tower, proc = VisionTower(str(path)), load_image_processor(str(path))
    a = c_score(tower, proc, pairs[:2])
    assert a.pairs == 2 and 0 <= a.pck <= 1
    assert c_score(tower, proc, pairs[:2]).pck == a.pck  # deterministic


def test_bad_pair_is_named(pairs):
    bad = type(pairs[0])(**{**pairs[0].__dict__, 'kps_src': pairs[0].kps_src + 1e4})
    with pytest.raises(ValueError, match=f'pair {pairs[0].pair_id}.*outside'):
        c_score(PatchColour(), Processor(), [bad])
