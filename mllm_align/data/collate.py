"""Batch LLaVA samples: right-pad the text, concatenate the images (any sizes).

Use in an mmengine dataloader config as ``collate_fn=dict(type=llava_collate_fn, pad_token_id=...)``
(mmengine wraps the function with ``functools.partial(**kwargs)``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..constants import IGNORE_INDEX

__all__ = ['colva_collate_fn', 'llava_collate_fn']


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
        (a list of [3, H_i, W_i] when sizes differ; Qwen2-VL patches beside ``image_grid_thw``) or None,
        'sample_ids': the items' ids}, 'data_samples': None}``; images in sample order. When the dataset skipped bad
        samples to fill the batch (``on_bad_sample='skip'``), ``data['skipped']`` holds
        ``{cause: count}``; ``data['notices']`` likewise sums the items' notices (``truncated``).

    Raises:
        ValueError: empty batch, mismatched ``input_ids``/``labels`` lengths, image entries from
            different processors, or an item longer than ``max_length``.
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

    data = {'input_ids': input_ids, 'labels': labels, 'attention_mask': attention_mask}
    data.update(_collate_images(instances))
    for key in ('skipped', 'notices'):  # per-cause counts of skipped bad samples / notices
        counts: dict[str, int] = {}
        for x in instances:
            for cause, count in (x.get(key) or {}).items():
                counts[cause] = counts.get(cause, 0) + count
        if counts:
            data[key] = counts
    ids = [x.get('id') for x in instances]
    if any(i is not None for i in ids):
        data['sample_ids'] = ids  # named in errors (e.g. an image/placeholder count mismatch)
    return {'data': data, 'data_samples': None}


#: Per-image entries concatenated along dim 0 in sample order (``image_grid_thw``: Qwen2-VL's patch grids;
#: ``num_tiles``: InternVL's tiles per image).
IMAGE_KEYS = ('pixel_values', 'image_grid_thw', 'num_tiles')


def _collate_images(instances: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``pixel_values`` (and ``image_grid_thw``) of the items, concatenated in sample order.

    Images of one size stack into ``[N, 3, H, W]``; images of different sizes become a list of N
    ``[3, H_i, W_i]`` tensors (the base encodes them one size at a time); Qwen2-VL patches
    ``[patches_i, C·T·p·p]`` concatenate into ``[Σ patches, C·T·p·p]`` beside ``image_grid_thw [N, 3]``.
    """
    out: dict[str, Any] = {'pixel_values': None}
    for key in IMAGE_KEYS:
        parts = [x[key] for x in instances if x.get(key) is not None]
        if not parts:
            continue
        if len({tuple(p.shape[1:]) for p in parts}) == 1:
            out[key] = torch.cat(parts, dim=0)
        elif key == 'pixel_values' and all(p.dim() == 4 for p in parts):
            out[key] = [im for p in parts for im in p.unbind(0)]  # N tensors [3, H_i, W_i]
        else:
            shapes = sorted({tuple(p.shape[1:]) for p in parts})
            raise ValueError(f'`{key}` of the samples in one batch have different trailing shapes {shapes}: '
                             'they must come from one image processor.')
    return out


def colva_collate_fn(instances: Sequence[Mapping[str, Any]], pad_token_id: int = 0,
                     max_length: int | None = None) -> dict[str, Any]:
    """CoLVA batches: :func:`llava_collate_fn`'s, plus the vision expert's images and the objects' masks.

    Items of ``SA1BPseudoVideoDataset`` / ``MMVMSFTDataset`` carry ``expert_pixel_values [N_e, 3, E, E]`` and
    ``expert_masks`` (N_e tensors ``[K_j, E, E]``, one per expert image); ``LLaVADataset`` items carry neither and
    count 0 expert images, so LLaVA and MMVM SFT data mix in one batch.

    Returns:
        ``llava_collate_fn``'s dict, its ``data`` also holding ``expert_pixel_values`` FloatTensor
        ``[Σ N_e, 3, E, E]`` (None when no item has one), ``expert_masks`` (list over all expert images in batch
        order), ``expert_counts`` LongTensor ``[B]`` (N_e per item), and, when some item has them, ``base_masks``
        (the items' lists concatenated in sample order) and ``instance_ids`` (one LongTensor ``[K]`` per item
        that has them); ``notices`` are summed as in ``llava_collate_fn``.

    Raises:
        ValueError: as ``llava_collate_fn``; an item whose ``expert_masks`` count differs from its expert images,
        or expert images of different sizes in one batch.
    """
    batch = llava_collate_fn(instances, pad_token_id, max_length)
    data = batch['data']
    pixels, masks, counts = [], [], []
    for x in instances:
        pv, xm = x.get('expert_pixel_values'), x.get('expert_masks')
        n = 0 if pv is None else int(pv.shape[0])
        if len(xm or []) != n:
            raise ValueError(f"Sample {x.get('id')!r}: {n} expert image(s) but {len(xm or [])} expert_masks "
                             'entries; give one [K, E, E] mask tensor per expert image.')
        if pv is not None:
            pixels.append(pv)
            masks.extend(xm)
        counts.append(n)
    if len({tuple(p.shape[1:]) for p in pixels}) > 1:
        raise ValueError(f'expert_pixel_values of one batch have different sizes '
                         f'{sorted({tuple(p.shape[1:]) for p in pixels})}: use one expert_image_size.')
    data['expert_pixel_values'] = torch.cat(pixels, dim=0) if pixels else None
    data['expert_masks'] = masks
    data['expert_counts'] = torch.tensor(counts, dtype=torch.long)
    if any(x.get('base_masks') is not None for x in instances):
        data['base_masks'] = [m for x in instances for m in (x.get('base_masks') or [])]
    if any(x.get('instance_ids') is not None for x in instances):
        data['instance_ids'] = [x['instance_ids'] for x in instances if x.get('instance_ids') is not None]
    return batch
