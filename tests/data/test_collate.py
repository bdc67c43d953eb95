"""llava_collate_fn: padding, masks, image concatenation, mmengine-style partial use."""
from __future__ import annotations

import functools

import pytest
import torch

from mllm_align.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mllm_align.data import llava_collate_fn


def item(ids, labels, n_img=0, size=8, fill=0.0, sid='x'):
    pv = None if n_img == 0 else torch.full((n_img, 3, size, size), fill)
    return {'input_ids': torch.tensor(ids), 'labels': torch.tensor(labels), 'pixel_values': pv, 'id': sid}


def test_right_padding_masks_and_image_order():
    batch = llava_collate_fn([
        item([1, IMAGE_TOKEN_INDEX, 5], [IGNORE_INDEX, IGNORE_INDEX, 5], n_img=1, fill=1.0),
        item([7, 8], [IGNORE_INDEX, 8]),
        item([IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX, 3, 4, 9], [IGNORE_INDEX] * 2 + [3, 4, 9], n_img=2, fill=2.0),
    ], pad_token_id=99)
    assert set(batch) == {'data', 'data_samples'} and batch['data_samples'] is None
    data = batch['data']
    assert data['input_ids'].tolist() == [[1, IMAGE_TOKEN_INDEX, 5, 99, 99], [7, 8, 99, 99, 99],
                                          [IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX, 3, 4, 9]]
    assert data['labels'].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX],
                                       [IGNORE_INDEX, 8] + [IGNORE_INDEX] * 3,
                                       [IGNORE_INDEX] * 2 + [3, 4, 9]]
    assert data['attention_mask'].dtype == torch.bool
    assert data['attention_mask'].tolist() == [[True] * 3 + [False] * 2, [True] * 2 + [False] * 3, [True] * 5]
    assert data['input_ids'].dtype == torch.long and data['labels'].dtype == torch.long
    pv = data['pixel_values']
    assert pv.shape == (3, 3, 8, 8)
    assert pv[:, 0, 0, 0].tolist() == [1.0, 2.0, 2.0]  # sample order
    # the number of images equals the number of placeholders
    assert int((data['input_ids'] == IMAGE_TOKEN_INDEX).sum()) == pv.shape[0]


def test_text_only_batch_has_no_pixel_values():
    data = llava_collate_fn([item([1, 2], [1, 2]), item([3], [3])])['data']
    assert data['pixel_values'] is None
    assert data['input_ids'].tolist() == [[1, 2], [3, 0]]  # default pad id 0, masked out


def test_partial_like_mmengine():
    collate = functools.partial(llava_collate_fn, pad_token_id=5)
    assert collate([item([1], [1]), item([1, 2], [1, 2])])['data']['input_ids'][0, 1] == 5


def test_errors():
    with pytest.raises(ValueError, match='empty batch'):
        llava_collate_fn([])
    with pytest.raises(ValueError, match="Sample 'x': input_ids has 2 ids but labels has 1"):
        llava_collate_fn([item([1, 2], [1])])
    with pytest.raises(ValueError, match='`image_grid_thw` of the samples in one batch have different trailing'):
        llava_collate_fn([dict(item([1], [1]), image_grid_thw=torch.ones(1, 3)),
                          dict(item([1], [1]), image_grid_thw=torch.ones(1, 2))])
    with pytest.raises(ValueError, match='more than max_length=1'):
        llava_collate_fn([item([1, 2], [1, 2])], max_length=1)


def test_images_of_different_sizes_become_a_list_in_sample_order():
    a = item([IMAGE_TOKEN_INDEX], [IGNORE_INDEX], n_img=1, size=8)
    b = item([IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX], [IGNORE_INDEX] * 2, n_img=2, size=16)
    pv = llava_collate_fn([a, b])['data']['pixel_values']
    assert isinstance(pv, list) and [tuple(p.shape) for p in pv] == [(3, 8, 8), (3, 16, 16), (3, 16, 16)]
    assert torch.equal(pv[0], a['pixel_values'][0]) and torch.equal(pv[2], b['pixel_values'][1])


def test_qwen2_vl_patches_and_grids_concatenate():
    a = dict(item([IMAGE_TOKEN_INDEX], [IGNORE_INDEX]), pixel_values=torch.randn(4, 6),
             image_grid_thw=torch.tensor([[1, 2, 2]]))
    b = dict(item([IMAGE_TOKEN_INDEX], [IGNORE_INDEX]), pixel_values=torch.randn(8, 6),
             image_grid_thw=torch.tensor([[1, 2, 4]]))
    data = llava_collate_fn([a, b])['data']
    assert data['pixel_values'].shape == (12, 6) and data['image_grid_thw'].tolist() == [[1, 2, 2], [1, 2, 4]]
