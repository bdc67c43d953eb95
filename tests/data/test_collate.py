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
    with pytest.raises(ValueError, match='must share'):
        llava_collate_fn([item([IMAGE_TOKEN_INDEX], [IGNORE_INDEX], n_img=1, size=8),
                          item([IMAGE_TOKEN_INDEX], [IGNORE_INDEX], n_img=1, size=16)])
    with pytest.raises(ValueError, match='more than max_length=1'):
        llava_collate_fn([item([1, 2], [1, 2])], max_length=1)
