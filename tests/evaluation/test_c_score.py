"""The C score end to end: SPair-format pairs, a vision representation, batched scoring vs one pair at a time."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
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


def test_centre_cropping_processor_sees_the_whole_canvas():
    """DINOv2-style processor (shortest edge 40, centre crop 35: keeps 7/8): the square is framed so that the crop
    removes only the frame. An 80-px image with a 4-px black border (5 %, less than the 6.25 % a bare crop cuts
    per side) must keep its border at the output's edge, and the frame's grey must not show."""
    from transformers import BitImageProcessor

    from mllm_align.evaluation.c_score import _place, kept_fraction

    proc = BitImageProcessor(size={'shortest_edge': 40}, crop_size={'height': 35, 'width': 35}, do_normalize=False,
                             do_rescale=False, image_mean=[0.5, 0.5, 0.5])
    assert kept_fraction(proc) == 35 / 40
    arr = np.zeros((80, 80, 3), np.uint8)
    arr[4:-4, 4:-4] = 255
    out = proc(images=[_place(Image.fromarray(arr), 'geoaware', proc)], return_tensors='np')['pixel_values'][0]
    assert out.shape == (3, 35, 35)
    assert out[:, 17, 0].max() < 60 and out[:, 17, -1].max() < 60  # the border, not the grey frame (127)
    assert out[:, 17, 17].min() > 200
    bare = proc(images=[Image.fromarray(arr)], return_tensors='np')['pixel_values'][0]
    assert bare[:, 17, 0].min() > 200  # a bare crop would have cut the border away


def test_window_radius_reaches_the_matcher(pairs):
    """A window of one cell (radius 0) is the argmax cell itself: the soft variant then scores exactly as argmax;
    the default radius (the law repository's 7) is recorded in the settings."""
    enc, proc = PatchColour(), Processor()
    hard = c_score(enc, proc, pairs, match='argmax', alpha=0.1)
    one_cell = c_score(enc, proc, pairs, match='window-soft-argmax', window_radius=0, alpha=0.1)
    assert (one_cell.hits, one_cell.keypoints) == (hard.hits, hard.keypoints)
    soft = c_score(enc, proc, pairs, match='window-soft-argmax', alpha=0.1)
    assert soft.settings['window_radius'] == 7 and soft.settings['temperature'] == 0.02


def test_multi_tower_processor_frames_the_canvas_for_each_tower(tmp_path):
    """C+D with a cropping tower (DINOv2-style: 40 → crop 35) beside one that does not crop: each tower's part of
    the packed pixels is its processor on the image framed for *its* crop (a frame for both, or none, would shift
    one tower's grid against the keypoints)."""
    from transformers import BitImageProcessor, CLIPImageProcessor

    from mllm_align.evaluation.c_score import _place
    from mllm_align.models import MultiTowerImageProcessor

    crop = BitImageProcessor(size={'shortest_edge': 40}, crop_size={'height': 35, 'width': 35}, do_normalize=False,
                             do_rescale=False, image_mean=[0.5, 0.5, 0.5])
    plain = CLIPImageProcessor(size={'shortest_edge': 32}, crop_size={'height': 32, 'width': 32})
    multi = MultiTowerImageProcessor([crop, plain])
    arr = np.zeros((60, 80, 3), np.uint8)
    arr[4:-4, 4:-4] = 255
    image = Image.fromarray(arr)
    image.save(tmp_path / 'im.png')
    seen = []

    class Split(nn.Module):  # records each tower's pixels; returns a 1×1 grid
        def forward(self, pixel_values):
            seen.append(multi.unpack(pixel_values))
            return torch.zeros(pixel_values.shape[0], 1, 2)

    grids = extract_feature_grids(Split(), multi, [tmp_path / 'im.png'])
    assert next(iter(grids.values())).shape == (2, 1, 1)
    for part, proc in zip(seen[0], (crop, plain)):
        alone = proc(images=[_place(image, 'geoaware', proc)], return_tensors='pt')['pixel_values']
        assert torch.equal(part, alone)
    naive = crop(images=[_place(image, 'geoaware', plain)], return_tensors='pt')['pixel_values']
    assert not torch.equal(seen[0][0], naive)  # the plain processor's (absent) frame would be wrong for the crop
