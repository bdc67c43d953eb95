"""A real-photo SFT mini set in the MMVMData layout (:mod:`mllm_align.data.mmvm_sft`), answers right by construction.

Built like the MMVM mini bench (:mod:`.mmvm_mini`: scikit-image 0.25.2's coins cut out by their masks, pasted on
its photos), but clean: the SFT dataset draws the visual prompts itself. ``python data/prepare_real.py --only
mmvm_sft_mini`` writes ``data/real/mmvm_sft_mini``:

- ``images/pair_xxx_{1,2}.jpg``: image 1, a background with the query coin (×0.9–1.3, any rotation); image 2,
  another background with k candidates (k cycles through 2, 3, 4, 5, 6, 8) on a non-overlapping layout. With
  probability 0.8 one candidate is the query coin barely changed (±5°, ×0.95–1.05: the target); the others are
  distractors of a kind each — another coin (TM), the query recoloured (CL), turned by 60–300° (OO) or rescaled
  ×0.55 / ×1.7 (SZ);
- ``mllm_match_choices_sft.json`` (the first half, choice-only records, ``vprompt_type`` ``mask``) and
  ``mllm_match_reasoning_sft.json`` (the second half, with a ``description`` written from the construction: what
  makes the target the same object and what sets each kind of distractor apart); both with ``pos_annotations``
  (query; target or nothing), ``neg_annotations`` (the distractors), ``is_disappear``, ``match_type`` (the
  distractor kinds present) and ``id``; masks as COCO RLE;
- ``manifest.json``: counts per form, per candidate count, targets absent.

Seed-deterministic: byte-identical for a seed and the same library versions.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..metrics.mmvm import MATCH_TYPES
from .mmvm_mini import (
    BACKGROUNDS,
    SKIMAGE_MEMBERS,
    _background,
    _candidates,
    _layout,
    _paste,
    _rle,
    _save,
    _transform,
    coin_objects,
)

__all__ = ['CHOICE_FILE', 'REASONING_FILE', 'build_mmvm_sft_mini']

CHOICE_FILE = 'mllm_match_choices_sft.json'
REASONING_FILE = 'mllm_match_reasoning_sft.json'
CANDIDATE_COUNTS = (2, 3, 4, 5, 6, 8)
_WHY = {'TM': 'a different coin, whose face and markings are not those of the query',
        'CL': 'the query coin in another colour',
        'OO': 'the query coin turned by a large angle',
        'SZ': 'the query coin at a clearly different size'}


def _description(present: bool, kinds: list[str]) -> str:
    others = '; '.join(sorted({_WHY[k] for k in kinds}))
    if present:
        text = ('one candidate shows the same coin as the query: the same face, markings, colour and size, at '
                'nearly the same orientation.')
        return text + (f' The other candidates differ: {others}.' if others else '')
    return f'no candidate is the query coin. Each differs from it: {others}.'


def build_mmvm_sft_mini(members: dict[str, bytes], out_dir: str | Path, num_samples: int = 48, seed: int = 0) -> dict:
    """Write ``num_samples`` records (half choice-only, half reasoning) under ``out_dir``; returns the manifest."""
    missing = [m for m in SKIMAGE_MEMBERS if m not in members]
    if missing:
        raise KeyError(f'build_mmvm_sft_mini: missing scikit-image data files {missing}.')
    if num_samples < 2:
        raise ValueError(f'num_samples={num_samples}: build at least 2 (one per form).')
    out_dir = Path(out_dir)
    (out_dir / 'images').mkdir(parents=True, exist_ok=True)
    coins = coin_objects(members['coins.png'])
    backgrounds = [Image.open(io.BytesIO(members[name])) for name in BACKGROUNDS]
    rng = np.random.default_rng(seed)
    forms: dict[str, list] = {CHOICE_FILE: [], REASONING_FILE: []}
    for c in range(num_samples):
        k = CANDIDATE_COUNTS[c % len(CANDIDATE_COUNTS)]
        reasoning = c >= num_samples // 2
        q_index, *others = [int(i) for i in rng.permutation(len(coins))]
        query = _transform(coins[q_index], scale=float(rng.uniform(0.9, 1.3)), angle=float(rng.uniform(0, 360)))
        b0, b1 = (int(i) for i in rng.choice(len(backgrounds), size=2, replace=False))
        frame0 = _background(backgrounds[b0], rng)
        (qx, qy), = _layout([query.mask.shape[::-1]], rng, margin=30)
        qmask = _paste(frame0, query, (qx, qy))
        present = bool(rng.random() < 0.8)
        objs, kinds = _candidates(query, coins, others, present, k, rng)
        frame1 = _background(backgrounds[b1], rng)
        corners = _layout([o.mask.shape[::-1] for o in objs], rng)
        masks = [_paste(frame1, o, xy) for o, xy in zip(objs, corners)]
        names = [f'images/pair_{c:03d}_1.jpg', f'images/pair_{c:03d}_2.jpg']
        _save(frame0, out_dir / names[0])
        _save(frame1, out_dir / names[1])
        record = {'id': f'pair_{c:03d}', 'file_names': [f'./{n}' for n in names],
                  'pos_annotations': [[_rle(qmask)], [_rle(masks[0])] if present else []],
                  'neg_annotations': [[], [_rle(m) for m in (masks[1:] if present else masks)]],
                  'is_disappear': not present, 'vprompt_type': 'mask',
                  'match_type': sorted({MATCH_TYPES.index(x) + 1 for x in kinds})}
        if reasoning:
            record['description'] = _description(present, kinds)
        forms[REASONING_FILE if reasoning else CHOICE_FILE].append(record)
    for name, records in forms.items():
        (out_dir / name).write_text(json.dumps(records) + '\n')
    all_records = forms[CHOICE_FILE] + forms[REASONING_FILE]
    manifest = dict(samples=num_samples, seed=seed, choice_only=len(forms[CHOICE_FILE]),
                    reasoning=len(forms[REASONING_FILE]),
                    candidates={str(n): sum(len(r['pos_annotations'][1]) + len(r['neg_annotations'][1]) == n
                                            for r in all_records) for n in CANDIDATE_COUNTS},
                    target_absent=sum(r['is_disappear'] for r in all_records),
                    sources='scikit-image 0.25.2: coins.png (objects), ' + ', '.join(BACKGROUNDS) + ' (backgrounds)')
    (out_dir / 'manifest.json').write_text(json.dumps(manifest, indent=1) + '\n')
    return manifest
