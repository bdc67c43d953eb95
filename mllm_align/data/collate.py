"""Batch LLaVA samples: right-pad the text, concatenate the images.

Use in an mmengine dataloader config as ``collate_fn=dict(type=llava_collate_fn, pad_token_id=...)``
(mmengine wraps the function with ``functools.partial(**kwargs)``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..constants import IGNORE_INDEX

__all__ = ['llava_collate_fn']


def llava_collate_fn(instances: Sequence[Mapping[str, Any]], pad_token_id: int = 0,
                     max_length: int | None = None) -> dict[str, Any]:
    """Collate dataset items (see ``LLaVADataset``) into the model's batch.

    Args:
        instances: B items with ``input_ids [L_i]``, ``labels [L_i]``, ``pixel_values
            [N_i, 3, H, W]`` or None.
        pad_token_id: id written into padded ``input_ids`` positions. Padded positions are
            masked by ``attention_mask`` and carry ``IGNORE_INDEX`` labels, so the value only
            has to be a valid embedding row; the tokenizer's pad id is the natural choice.
        max_length: optional sanity check: raise if an item is longer (the dataset truncates;
            nothing is padded up to it).

    Returns:
        ``{'data': {'input_ids': LongTensor [B, Lmax], 'labels': LongTensor [B, Lmax],
        'attention_mask': BoolTensor [B, Lmax], 'pixel_values': FloatTensor [sum N_i, 3, H, W]
        or None}, 'data_samples': None}``; images in sample order. When the dataset skipped bad
        samples to fill the batch (``on_bad_sample='skip'``), ``data['skipped']`` holds
        ``{cause: count}``; ``data['notices']`` likewise sums the items' notices (``truncated``).

    Raises:
        ValueError: empty batch, mismatched ``input_ids``/``labels`` lengths, images of different
            sizes, or an item longer than ``max_length``.
    """
    if len(instances) == 0:
        raise ValueError('llava_collate_fn got an empty batch.')
    lengths = [len(x['input_ids']) for x in instances]
    for x, n in zip(instances, lengths):
        if len(x['labels']) != n:
            raise ValueError(f"Sample {x.get('id')!r}: input_ids has {n} ids but labels has "
                             f"{len(x['labels'])}.")
        if max_length is not None and n > max_length:
            raise ValueError(f"Sample {x.get('id')!r} has {n} ids, more than max_length={max_length}.")
    B, L = len(instances), max(lengths)
    input_ids = torch.full((B, L), pad_token_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.bool)
    for b, (x, n) in enumerate(zip(instances, lengths)):
        input_ids[b, :n] = torch.as_tensor(x['input_ids'], dtype=torch.long)
        labels[b, :n] = torch.as_tensor(x['labels'], dtype=torch.long)
        attention_mask[b, :n] = True

    images = [x['pixel_values'] for x in instances if x.get('pixel_values') is not None]
    pixel_values = None
    if images:
        shapes = {tuple(im.shape[1:]) for im in images}
        if len(shapes) > 1:
            raise ValueError(f'Images in one batch must share (3, H, W); found {sorted(shapes)}. '
                             'Use one image processor with a fixed crop size.')
        pixel_values = torch.cat(images, dim=0)  # (sum N_i, 3, H, W)
    data = {'input_ids': input_ids, 'labels': labels, 'attention_mask': attention_mask,
            'pixel_values': pixel_values}
    for key in ('skipped', 'notices'):  # per-cause counts of skipped bad samples / notices
        counts: dict[str, int] = {}
        for x in instances:
            for cause, count in (x.get(key) or {}).items():
                counts[cause] = counts.get(cause, 0) + count
        if counts:
            data[key] = counts
    return {'data': data, 'data_samples': None}
