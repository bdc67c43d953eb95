"""SA1BPseudoVideoDataset: the item contract, image/mask alignment across views, drops, determinism, bad samples."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi

from mllm_align.data.collate import colva_collate_fn
from mllm_align.data.llava_dataset import BadSampleError
from mllm_align.data.sa1b import SA1BPseudoVideoDataset, apply_view, sample_view_params

TINY = Path(__file__).resolve().parents[2] / 'data' / 'tiny'
H, W = 120, 160
COLOURS = {101: (230, 30, 30), 102: (30, 200, 30), 103: (30, 30, 230), 104: (230, 200, 0)}
CENTRES = {101: (55, 42), 102: (108, 40), 103: (52, 82), 104: (106, 84)}


class IdentityProcessor:
    """A fixed-size 'processor' that hands the image over as [0, 1] floats, so masks can be checked on it."""
    image_mean = (0.5, 0.5, 0.5)
    model_input_names = ['pixel_values']

    def __call__(self, images, return_tensors='np'):
        return {'pixel_values': np.stack([np.asarray(im, np.float32).transpose(2, 0, 1) / 255 for im in images])}


def _rle(mask):
    from pycocotools import mask as mask_utils
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in r['size']], 'counts': r['counts'].decode()}


def _write(root, n, objects, tiny=True):
    """sa_<n>.jpg/.json: discs of COLOURS at CENTRES (``objects``: which ids), plus a 2×2 speck (id 999)."""
    yy, xx = np.mgrid[:H, :W]
    img = np.full((H, W, 3), 128, np.uint8)
    anns = []
    for i in objects:
        cx, cy = CENTRES[i]
        m = (xx - cx) ** 2 + (yy - cy) ** 2 < 17 ** 2
        img[m] = COLOURS[i]
        anns.append({'id': i, 'segmentation': _rle(m), 'area': int(m.sum()), 'bbox': [cx - 17, cy - 17, 34, 34]})
    if tiny:
        m = np.zeros((H, W), bool)
        m[60:62, 80:82] = True
        img[m] = 0
        anns.append({'id': 999, 'segmentation': _rle(m), 'area': 4, 'bbox': [80, 60, 2, 2]})
    Image.fromarray(img).save(root / f'sa_{n}.png')
    (root / f'sa_{n}.png').rename(root / f'sa_{n}.jpg')  # lossless pixels under the SA-1B name
    (root / f'sa_{n}.json').write_text(json.dumps({'image': {'image_id': n, 'width': W, 'height': H,
                                                             'file_name': f'sa_{n}.jpg'}, 'annotations': anns}))


@pytest.fixture()
def sa_root(tmp_path):
    root = tmp_path / 'sa1b'
    root.mkdir()
    for n in range(1, 7):
        _write(root, n, list(COLOURS))
    return root


def make(root, **kw):
    kw = {'image_processor': IdentityProcessor(), 'expert_image_size': 64, 'expert_grid': 8, **kw}
    return SA1BPseudoVideoDataset(root, **kw)


def _mean_colour(img_chw: torch.Tensor, mask: torch.Tensor):
    core = ndi.binary_erosion(mask.numpy(), iterations=2)
    if core.sum() < 4:
        return None
    return (img_chw.numpy()[:, core].mean(axis=1) * 255).round()


def test_item_contract(sa_root):
    item = make(sa_root)[0]
    assert set(item) == {'id', 'input_ids', 'labels', 'pixel_values', 'expert_pixel_values', 'expert_masks',
                         'base_masks', 'instance_ids', 'notices'}
    assert item['id'] == 'sa_1'
    assert item['input_ids'].shape == (0,) and item['input_ids'].dtype == torch.long
    assert item['labels'].shape == (0,) and item['labels'].dtype == torch.long
    ev = item['expert_pixel_values']
    assert ev.shape == (2, 3, 64, 64) and ev.dtype == torch.float32 and 0 <= ev.min() and ev.max() <= 1
    K = len(item['instance_ids'])
    assert len(item['expert_masks']) == len(item['base_masks']) == 2 == item['pixel_values'].shape[0]
    for em, bm in zip(item['expert_masks'], item['base_masks']):
        assert em.dtype == bm.dtype == torch.bool and em.shape == (K, 64, 64)
        assert bm.shape == (K, 64, 64) == (K, *item['pixel_values'].shape[-2:])  # the base image's size
    # both directions: expert [view 1, view 2] pairs with base [view 2, view 1]
    assert torch.equal(item['expert_masks'][0], item['base_masks'][1])
    assert torch.equal(item['expert_masks'][1], item['base_masks'][0])
    assert item['instance_ids'].dtype == torch.long
    one = make(sa_root, directions='one')[0]
    assert one['expert_pixel_values'].shape == (1, 3, 64, 64) and len(one['expert_masks']) == 1
    assert len(one['instance_ids']) >= K  # fewer views to survive: at least as many objects
    assert set(item['notices']) == {'objects_dropped_small', 'objects_over_max'}


def test_views_keep_ids_and_alignment(sa_root):
    ds = make(sa_root)
    checked = 0
    for i in range(len(ds)):
        item = ds[i]
        ids = item['instance_ids'].tolist()
        assert 999 not in ids and set(ids) <= set(COLOURS)
        for img, masks in ((item['expert_pixel_values'][0], item['expert_masks'][0]),
                           (item['pixel_values'][0], item['base_masks'][0])):
            for k, i_d in enumerate(ids):
                colour = _mean_colour(img, masks[k])
                if colour is not None:  # the object's own colour in both views: same id, aligned mask
                    assert np.abs(colour - COLOURS[i_d]).max() <= 12, (i, i_d, colour)
                    checked += 1
    assert checked >= 2 * len(ds)


def test_apply_view_moves_image_and_masks_together():
    yy, xx = np.mgrid[:H, :W]
    mask = (xx - 40) ** 2 + (yy - 30) ** 2 < 15 ** 2
    img = np.zeros((H, W, 3), np.uint8)
    img[mask] = (250, 10, 10)
    rng = np.random.default_rng(3)
    for _ in range(5):
        p1, p2 = sample_view_params(rng, W, H, 96, 'independent')
        for p in (p1, p2):
            view, vm = apply_view(Image.fromarray(img), mask[None], p)
            assert view.size == (96, 96) and vm.shape == (1, 96, 96)
            if ndi.binary_erosion(vm[0], iterations=2).sum() >= 4:
                arr = np.asarray(view)[ndi.binary_erosion(vm[0], iterations=2)]
                assert arr[:, 0].mean() > 235 and arr[:, 1].mean() < 25 and arr[:, 0].min() > 150


def test_clip_sampling_shares_all_but_the_angle():
    rng = np.random.default_rng(0)
    for _ in range(10):
        a, b = sample_view_params(rng, W, H, 1024, 'clip')
        assert (a.zoom_short, a.crop, a.flip, a.centre) == (b.zoom_short, b.crop, b.flip, b.centre)
        assert a.angle != b.angle and -15 <= a.angle <= 15
    a, b = sample_view_params(np.random.default_rng(1), W, H, 1024, 'independent')
    assert a.centre != b.centre


def test_small_and_grid_vanishing_objects_are_dropped_and_counted(sa_root):
    item = make(sa_root)[0]
    assert item['notices']['objects_dropped_small'] >= 1  # the 2×2 speck
    # a coarse grid with a high threshold: the discs cover no 32×32 cell at 0.99
    with pytest.raises(BadSampleError, match=r'sa_1\.jpg.*survive augmentation') as err:
        make(sa_root, expert_grid=2, mask_threshold=0.99)[0]
    assert err.value.cause == 'too_few_objects'
    ds = make(sa_root, expert_grid=2, mask_threshold=0.99, on_bad_sample='skip', min_object_pixels=1)
    with pytest.raises(RuntimeError, match='Every one of the 6 images'):
        ds[0]
    assert ds.skip_counts['too_few_objects'] == 6


def test_max_objects_is_a_seeded_choice(sa_root):
    item = make(sa_root, max_objects=2)[1]
    assert len(item['instance_ids']) == 2 and item['notices']['objects_over_max'] >= 1
    assert torch.equal(item['instance_ids'], make(sa_root, max_objects=2)[1]['instance_ids'])


def test_deterministic_for_a_seed(sa_root):
    a, b, c = make(sa_root)[2], make(sa_root)[2], make(sa_root, seed=5)[2]
    for key in ('expert_pixel_values', 'pixel_values', 'instance_ids'):
        assert torch.equal(a[key], b[key])
    assert torch.equal(a['base_masks'][0], b['base_masks'][0])
    assert not torch.equal(a['expert_pixel_values'], c['expert_pixel_values'])


def test_too_few_objects_raise_or_skip_naming_the_file(sa_root):
    _write(sa_root, 0, [101])  # one disc (+ the speck, dropped): sorted first
    with pytest.raises(BadSampleError, match=r'sa_0\.jpg: 1 of its 2 objects survive'):
        make(sa_root)[0]
    ds = make(sa_root, on_bad_sample='skip')
    item = ds[0]
    assert item['id'] == 'sa_1' and item['skipped'] == {'too_few_objects': 1} and ds.num_skipped == 1


def test_missing_and_malformed_annotations(sa_root):
    (sa_root / 'sa_3.json').write_text('{"annotations": 5}')
    (sa_root / 'sa_4.json').unlink()
    ds = make(sa_root)
    with pytest.raises(BadSampleError, match=r'sa_3\.json: no "annotations" list'):
        ds[2]
    with pytest.raises(BadSampleError, match=r'sa_4\.json: the annotation file does not exist'):
        ds[3]


def test_index_file_and_argument_errors(sa_root, tmp_path):
    index = tmp_path / 'index.json'
    index.write_text(json.dumps({'images': [{'file_name': 'sa_5.jpg'}, {'file_name': 'sa_2.jpg'}]}))
    ds = make(sa_root, index_file=index)
    assert len(ds) == 2 and ds[0]['id'] == 'sa_5'
    index.write_text('[{"x": 1}]')
    with pytest.raises(ValueError, match='entry 0 has no file name'):
        make(sa_root, index_file=index)
    with pytest.raises(ValueError, match='no sa_\\*.jpg'):
        make(tmp_path)
    with pytest.raises(ValueError, match='mask_threshold'):
        make(sa_root, mask_threshold=1.5)
    with pytest.raises(ValueError, match='view_sampling'):
        make(sa_root, view_sampling='both')


@pytest.mark.parametrize('proc', ['qwen2_vl', 'vision/clip'])
def test_real_tiny_processors_and_collate(sa_root, tiny_assets, proc):
    from transformers import AutoImageProcessor
    if proc == 'qwen2_vl':  # its own stamp: not part of the tiny_assets fixture
        from mllm_align.testing.tiny_assets import build_tiny_qwen2_vl
        build_tiny_qwen2_vl(tiny_assets.root)
    processor = AutoImageProcessor.from_pretrained(str(TINY / proc), use_fast=False)
    ds = make(sa_root, image_processor=processor)
    items = [ds[0], ds[1]]
    if proc == 'qwen2_vl':
        assert items[0]['image_grid_thw'].shape == (2, 3)
    else:
        assert items[0]['pixel_values'].shape == (2, 3, 32, 32)
    data = colva_collate_fn(items)['data']
    assert data['expert_pixel_values'].shape == (4, 3, 64, 64)
    assert data['expert_counts'].tolist() == [2, 2] and len(data['expert_masks']) == 4
    assert len(data['base_masks']) == 4 and len(data['instance_ids']) == 2
    assert data['notices']['objects_dropped_small'] == sum(x['notices']['objects_dropped_small'] for x in items)
    assert data['input_ids'].shape == (2, 0)


def test_grid_test_agrees_with_the_model_pooling():
    from mllm_align.data.sa1b import objects_on_grid
    from mllm_align.models.object_adapter import masks_to_grid
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(40, 37, 53, generator=g) > torch.linspace(0.5, 0.999, 40)[:, None, None]
    masks[:, 0, 0] = True  # none empty
    for grid, tau in ((4, 0.55), (8, 0.5), (16, 0.3)):
        assert torch.equal(objects_on_grid(masks, grid, tau), masks_to_grid(masks, grid, tau)[1])
