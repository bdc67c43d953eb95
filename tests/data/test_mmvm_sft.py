"""MMVMSFTDataset and the MMVMData loader: item contract, text block, answers consistent with the drawing, both
conversation forms, bad inputs, mixing with LLaVA data through colva_collate_fn."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi

from mllm_align.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, VPT_TOKEN
from mllm_align.data.collate import colva_collate_fn
from mllm_align.data.llava_dataset import BadSampleError, ConcatDataset, LLaVADataset
from mllm_align.data.mmvm_sft import (
    QUESTIONS,
    REASONING_PREFIXES,
    MMVMSFTDataset,
    build_conversation,
    load_mmvm_sft,
    object_block,
    record_masks,
)
from mllm_align.data.visual_prompts import NAMED_COLOURS, candidate_colours

TINY = Path(__file__).resolve().parents[2] / 'data' / 'tiny'
H, W = 96, 128


class IdentityProcessor:
    """Fixed-size 'processor' that keeps the drawn image as [0, 1] floats (so the drawing can be checked)."""
    image_mean = (0.5, 0.5, 0.5)
    model_input_names = ['pixel_values']

    def __call__(self, images, return_tensors='np'):
        return {'pixel_values': np.stack([np.asarray(im, np.float32).transpose(2, 0, 1) / 255 for im in images])}


def _rle(mask):
    from pycocotools import mask as mask_utils
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in r['size']], 'counts': r['counts'].decode()}


def _disc(cx, cy, r=11):
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2


SPOTS = [(20, 20), (60, 20), (100, 20), (20, 70), (60, 70), (100, 70)]


def _case(root, name, k, present=True, description=None, **extra):
    """Image 1: the query disc; image 2: k discs, the first (when present) the query's twin."""
    a = np.full((H, W, 3), 235, np.uint8)
    q = _disc(64, 48)
    a[q] = (120, 60, 20)
    b = np.full((H, W, 3), 235, np.uint8)
    masks = []
    for j in range(k):
        m = _disc(*SPOTS[j])
        b[m] = (120, 60, 20) if (j == 0 and present) else (20 + 30 * j, 140, 200 - 20 * j)
        masks.append(m)
    Image.fromarray(a).save(root / f'{name}_1.png')
    Image.fromarray(b).save(root / f'{name}_2.png')
    rec = {'id': name, 'file_names': [f'./{name}_1.png', f'./{name}_2.png'],
           'pos_annotations': [[_rle(q)], [_rle(masks[0])] if present else []],
           'neg_annotations': [[], [_rle(m) for m in masks[1:]] if present else [_rle(m) for m in masks]],
           'is_disappear': not present, 'vprompt_type': 'mask', 'match_type': [3]}
    if description:
        rec['description'] = description
    rec.update(extra)
    return rec, q, masks


@pytest.fixture()
def data(tmp_path):
    records = []
    for n, (k, present, desc) in enumerate([(3, True, None), (5, True, 'the same brown disc.'), (2, False, None),
                                            (6, True, 'it has the same colour and size.')]):
        records.append(_case(tmp_path, f'c{n}', k, present, desc)[0])
    path = tmp_path / 'sft.json'
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope='module')
def tokenizer():
    from mllm_align.models.builders import load_tokenizer
    return load_tokenizer(str(TINY / 'llm' / 'qwen2'), extra_special_tokens=[VPT_TOKEN])


def make(path, tokenizer, **kw):
    kw = {'template': 'qwen2', 'image_processor': IdentityProcessor(), 'expert_image_size': 64, 'expert_grid': 8,
          'pad_image_to_square': False, 'num_image_tokens': 4, **kw}
    return MMVMSFTDataset(path, tokenizer, **kw)


def _text(tokenizer, ids):
    return tokenizer.decode([i for i in ids if i >= 0])


def test_loader_reads_the_layout(data):
    recs = load_mmvm_sft(data)
    assert [r.id for r in recs] == ['c0', 'c1', 'c2', 'c3']
    assert [len(r.candidates) for r in recs] == [3, 5, 2, 6] and [r.answer for r in recs] == [0, 0, None, 0]
    assert recs[1].description == 'the same brown disc.' and recs[0].match_types == ('TM',)
    assert recs[0].images[0] == data.parent / 'c0_1.png'


def test_item_contract_and_token_counts(data, tokenizer):
    ds = make(data, tokenizer)
    vpt = tokenizer.convert_tokens_to_ids(VPT_TOKEN)
    for i, k in enumerate([3, 5, 2, 6]):
        item = ds[i]
        assert set(item) == {'id', 'input_ids', 'labels', 'pixel_values', 'expert_pixel_values', 'expert_masks'}
        ids, labels = item['input_ids'], item['labels']
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and ids.dim() == 1
        assert int((ids == IMAGE_TOKEN_INDEX).sum()) == 2 and int((ids == vpt).sum()) == k + 1
        assert item['pixel_values'].shape == (2, 3, H, W)
        ev = item['expert_pixel_values']
        assert ev.shape == (2, 3, 64, 64) and ev.dtype == torch.float32 and 0 <= ev.min() and ev.max() <= 1
        q, c = item['expert_masks']
        assert q.shape == (1, 64, 64) and c.shape == (k, 64, 64) and q.dtype == c.dtype == torch.bool
        # the clean image under the expert: the query disc's brown, no contour colour
        core = torch.from_numpy(ndi.binary_erosion(q[0].numpy(), iterations=1))
        assert np.allclose(ev[0][:, core].mean(1).numpy() * 255, (120, 60, 20), atol=8)
        # every VPT id is in the first human turn (unsupervised), after both images
        pos = (ids == vpt).nonzero()[:, 0]
        assert (labels[pos] == IGNORE_INDEX).all() and pos.min() > (ids == IMAGE_TOKEN_INDEX).nonzero().max()


def test_text_block_and_choice_only_form(data, tokenizer):
    item = make(data, tokenizer, form='choice')[0]
    text = _text(tokenizer, item['input_ids'].tolist())
    block = ('Objects in Image-1: <query object><VPT_CONTEXT>.\nObjects in Image-2: <object-1><VPT_CONTEXT>, '
             '<object-2><VPT_CONTEXT>, <object-3><VPT_CONTEXT>.\n\n')
    assert 'Image-1: \nImage-2: \n' + block in text  # <image> placeholders dropped by the decode
    assert object_block(3) + '\n' == block
    assert text.count('<|im_start|>assistant') == 1
    assert 'A. 1\nB. 2\nC. 3\nD. None of the above choices are correct\n<|im_end|>' in text
    sup = [t for t, lab in zip(item['input_ids'].tolist(), item['labels'].tolist()) if lab != IGNORE_INDEX]
    assert _text(tokenizer, sup) in {f'{x}<|im_end|>' for x in 'ABC'}


def test_reasoning_form_two_rounds_labels_only_on_replies(data, tokenizer):
    item = make(data, tokenizer)[1]  # auto: the record has a description
    ids, labels = item['input_ids'].tolist(), item['labels'].tolist()
    text = _text(tokenizer, ids)
    assert text.count('<|im_start|>assistant') == 2 and '<|im_start|>user\nWhy?<|im_end|>' in text
    spans, cur = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            cur.append(t)
        elif cur:
            spans.append(_text(tokenizer, cur))
            cur = []
    assert len(spans) == 2 and spans[0] in {f'{x}<|im_end|>' for x in 'ABCDE'}
    assert any(spans[1] == p + 'the same brown disc.<|im_end|>' for p in REASONING_PREFIXES)
    with pytest.raises(BadSampleError, match="c0.*needs the record's `description`"):
        make(data, tokenizer, form='reasoning')[0]


def _ring_colour(img_chw, mask):
    ring = ndi.binary_dilation(mask, iterations=2) & ~mask
    pix = (img_chw.numpy()[:, ring].T * 255).round().astype(int)
    values, counts = np.unique(pix, axis=0, return_counts=True)
    return tuple(int(v) for v in values[np.argmax(counts)])


@pytest.mark.parametrize('index', [0, 1, 2, 3])
def test_answer_and_ids_agree_with_the_drawing(data, tokenizer, index):
    ds = make(data, tokenizer)
    rec = ds.record(index)
    item = ds[index]
    text = _text(tokenizer, item['input_ids'].tolist())
    question = text.split('<VPT_CONTEXT>.\n\n')[1].split(' Please make a choice')[0]
    colour = max((c for c in NAMED_COLOURS if f' {c} ' in question), key=len)
    q, masks = record_masks(rec, [(W, H), (W, H)])
    assert _ring_colour(item['pixel_values'][0], q) == NAMED_COLOURS[colour]  # the colour the question names
    answer = _text(tokenizer, [t for t, lab in zip(item['input_ids'].tolist(), item['labels'].tolist())
                               if lab != IGNORE_INDEX]).split('<|im_end|>')[0]
    k = len(masks)
    letters = [chr(65 + i) for i in range(k + 1)]
    if rec.answer is None:
        assert answer == letters[k]
        return
    tag = letters.index(answer) + 1  # option A is ID 1, …
    palette = dict(candidate_colours(k, exclude=(colour,)))
    target_ring = _ring_colour(item['pixel_values'][1], masks[rec.answer])
    assert target_ring == list(palette.values())[tag - 1]  # the answer's ID colour is at the target's ring
    # the candidate masks are in ID order: the answer's ID indexes the target's expert mask
    target = torch.from_numpy(np.asarray(Image.fromarray(masks[rec.answer].astype(np.uint8) * 255)
                                         .resize((64, 64), Image.Resampling.BILINEAR)) > 127)
    assert torch.equal(item['expert_masks'][1][tag - 1], target)


def test_deterministic_and_seeded(data, tokenizer):
    a, b, c = make(data, tokenizer)[3], make(data, tokenizer)[3], make(data, tokenizer, seed=7)[3]
    assert torch.equal(a['input_ids'], b['input_ids']) and torch.equal(a['pixel_values'], b['pixel_values'])
    assert not (torch.equal(a['input_ids'], c['input_ids']) and torch.equal(a['pixel_values'], c['pixel_values']))


def _bad_file(tmp_path, mutate):
    rec, q, masks = _case(tmp_path, 'bad', 3)
    mutate(rec, q, masks)
    path = tmp_path / 'bad.json'
    path.write_text(json.dumps([rec]))
    return path


@pytest.mark.parametrize('mutate, cause, message', [
    (lambda r, q, m: r['pos_annotations'][0][0].update(size=[10, 10]), 'mask_size_mismatch', r'RLE size \[10, 10\]'),
    (lambda r, q, m: r['neg_annotations'][1].append([[0, 0, 500, 0, 500, 500]]), 'bad_mask', 'outside'),
    (lambda r, q, m: r['neg_annotations'][1].append(_rle(np.zeros((H, W), bool))), 'empty_mask', 'empty'),
    (lambda r, q, m: (r['pos_annotations'].__setitem__(1, []), r['neg_annotations'].__setitem__(1, [])),
     'no_candidates', 'no candidate'),
    (lambda r, q, m: r['neg_annotations'][1].extend([_rle(m[1])] * 24), 'too_many_candidates', '27 candidates'),
    (lambda r, q, m: r['file_names'].__setitem__(1, './nowhere.png'), 'missing_image', 'nowhere.png'),
    (lambda r, q, m: r.update(vprompt_type='bbox'), 'unsupported_prompt_type', 'bbox'),
    (lambda r, q, m: r['neg_annotations'][1].append(_rle(_disc(64, 48, r=2))), 'object_vanishes_on_grid',
     'candidate ID'),
])
def test_bad_inputs_name_the_sample(tmp_path, tokenizer, mutate, cause, message):
    path = _bad_file(tmp_path, mutate)
    with pytest.raises(BadSampleError, match=message) as err:
        make(path, tokenizer)[0]
    assert err.value.cause == cause and "id 'bad'" in str(err.value) and 'bad.json, item 0' in str(err.value)
    assert "on_bad_sample='skip'" in str(err.value)


def test_skip_counts_and_uses_the_next(tmp_path, data, tokenizer):
    bad = _bad_file(tmp_path, lambda r, q, m: r['neg_annotations'][1].append(_rle(np.zeros((H, W), bool))))
    ds = make([bad, data], tokenizer, on_bad_sample='skip')
    item = ds[0]
    assert item['id'] == 'c0' and item['skipped'] == {'empty_mask': 1} and ds.num_skipped == 1


def test_tokenizer_without_the_object_token(data):
    from mllm_align.models.builders import load_tokenizer
    with pytest.raises(ValueError, match='extra_special_tokens'):
        make(data, load_tokenizer(str(TINY / 'llm' / 'qwen2')))


def test_build_conversation_forms():
    choice = build_conversation('red', 2, 'B')
    assert [t['from'] for t in choice] == ['human', 'gpt'] and choice[1]['value'] == 'B'
    assert choice[0]['value'].startswith('Image-1: <image>\nImage-2: <image>\nObjects in Image-1: ')
    assert QUESTIONS[0].format(colour='red') + ' Please make a choice from the following options: \nA. 1\nB. 2\n' \
        'C. None of the above choices are correct\n' in choice[0]['value']
    reasoning = build_conversation('red', 2, 'C', description='gone.', prefix=1)
    assert [t['value'] for t in reasoning[1:]] == ['C', 'Why?', REASONING_PREFIXES[1] + 'gone.']
    with pytest.raises(ValueError, match="answer 'D'"):
        build_conversation('red', 2, 'D')


def test_mixed_llava_and_mmvm_batch(tmp_path, data, tokenizer, tiny_assets):
    from transformers import AutoImageProcessor
    proc = AutoImageProcessor.from_pretrained(str(TINY / 'vision' / 'clip'), use_fast=False)
    Image.new('RGB', (40, 30), (200, 10, 10)).save(tmp_path / 'red.png')
    llava_json = tmp_path / 'llava.json'
    llava_json.write_text(json.dumps([{'id': 'l0', 'image': 'red.png', 'conversations': [
        {'from': 'human', 'value': '<image>\nWhat colour?'}, {'from': 'gpt', 'value': 'Red.'}]}]))
    llava = LLaVADataset(llava_json, tmp_path, tokenizer, 'qwen2', image_processor=proc, num_image_tokens=4)
    mmvm = make(data, tokenizer, image_processor=proc, pad_image_to_square=True)
    mixed = ConcatDataset([llava, mmvm])
    assert len(mixed) == 5 and len(mixed.modality_lengths) == 5
    batch = colva_collate_fn([mixed[0], mixed[2], mixed[1]], pad_token_id=tokenizer.pad_token_id)['data']
    assert batch['pixel_values'].shape == (5, 3, 32, 32)  # 1 + 2 + 2 base images
    assert batch['expert_counts'].tolist() == [0, 2, 2]
    assert batch['expert_pixel_values'].shape == (4, 3, 64, 64) and len(batch['expert_masks']) == 4
    assert [m.shape[0] for m in batch['expert_masks']] == [1, 5, 1, 3]
    assert 'base_masks' not in batch and 'instance_ids' not in batch
    assert int((batch['input_ids'] == IMAGE_TOKEN_INDEX).sum()) == 5


def test_qwen2_vl_processor(data, tiny_assets):
    from transformers import AutoImageProcessor

    from mllm_align.models.builders import load_tokenizer
    from mllm_align.testing.tiny_assets import build_tiny_qwen2_vl
    build_tiny_qwen2_vl(tiny_assets.root)  # its own stamp: not part of the tiny_assets fixture
    tok = load_tokenizer(str(TINY / 'qwen2_vl'), extra_special_tokens=[VPT_TOKEN])
    proc = AutoImageProcessor.from_pretrained(str(TINY / 'qwen2_vl'), use_fast=False)
    item = make(data, tok, template='qwen2_vl', image_processor=proc)[0]
    assert item['image_grid_thw'].shape == (2, 3) and item['pixel_values'].dim() == 2
    assert int((item['input_ids'] == IMAGE_TOKEN_INDEX).sum()) == 2
    assert '<|vision_start|>' in tok.decode([i for i in item['input_ids'].tolist() if i >= 0])
    batch = colva_collate_fn([item, item])['data']
    assert batch['image_grid_thw'].shape == (4, 3) and batch['expert_counts'].tolist() == [2, 2]


def test_colva_collate_errors(data, tokenizer):
    item = make(data, tokenizer)[0]
    with pytest.raises(ValueError, match="Sample 'c0': 2 expert image\\(s\\) but 1 expert_masks"):
        colva_collate_fn([dict(item, expert_masks=item['expert_masks'][:1])])
    small = dict(item, expert_pixel_values=item['expert_pixel_values'][:, :, :32, :32])
    with pytest.raises(ValueError, match='one expert_image_size'):
        colva_collate_fn([item, small])
