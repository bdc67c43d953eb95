"""LLaVADataset: items, laziness, lengths, bad input (raise and skip), truncation, concatenation."""
from __future__ import annotations

import functools
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

import mllm_align.data.bad_samples as bad_samples
import mllm_align.data.json_index as json_index
from mllm_align.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mllm_align.data import BadSampleError, ConcatDataset, LLaVADataset, MissingImageError, encode_conversation
from mllm_align.testing.tiny_tokenizer import SAMPLE_CORPUS, build_tiny_tokenizer


@functools.lru_cache(maxsize=None)
def tiny(kind: str = 'qwen2'):
    return build_tiny_tokenizer(kind, list(SAMPLE_CORPUS), vocab_size=512)


def processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={'shortest_edge': 32}, crop_size={'height': 32, 'width': 32})


def conv(q: str, a: str) -> list[dict]:
    return [{'from': 'human', 'value': q}, {'from': 'gpt', 'value': a}]


@pytest.fixture()
def image_dir(tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    Image.new('RGB', (40, 20), (255, 0, 0)).save(folder / 'red.png')
    Image.new('L', (16, 16), 128).save(folder / 'grey.png')
    Image.new('RGBA', (20, 30), (0, 0, 255, 128)).save(folder / 'blue.png')
    (folder / 'broken.png').write_bytes(b'not a png at all')
    return folder


GOOD = [
    {'id': 'mm1', 'image': 'red.png', 'conversations': conv('<image>\nWhat color?', 'Red.')},
    {'id': 'text1', 'conversations': conv('Hello there!', 'Hi! How are you today?')},
    {'id': 'mm2', 'image': ['grey.png', 'blue.png'],
     'conversations': conv('<image>\n<image>\nSame color?', 'No.') + conv('Sure?', 'Yes, sure.')},
]


def write_json(path, items, jsonl: bool = False):
    if jsonl:
        path.write_text('\n'.join(json.dumps(x) for x in items) + '\n', encoding='utf-8')
    else:
        path.write_text(json.dumps(items, indent=2), encoding='utf-8')
    return path


def make(tmp_path, image_dir, items, name='data.json', **kwargs) -> LLaVADataset:
    path = write_json(tmp_path / name, items, jsonl=name.endswith('.jsonl'))
    kwargs.setdefault('tokenizer', tiny())
    kwargs.setdefault('template', 'qwen2')
    kwargs.setdefault('image_processor', processor())
    kwargs.setdefault('num_image_tokens', 4)
    return LLaVADataset(str(path), str(image_dir), **kwargs)


# ------------------------------------------------------------------------------ items
def test_items_follow_the_contract(tmp_path, image_dir):
    ds = make(tmp_path, image_dir, GOOD)
    assert len(ds) == 3
    item = ds[0]
    assert set(item) == {'input_ids', 'labels', 'pixel_values', 'id'}
    assert item['id'] == 'mm1'
    assert item['input_ids'].dtype == torch.long and item['labels'].dtype == torch.long
    assert item['input_ids'].shape == item['labels'].shape
    assert (item['input_ids'] == IMAGE_TOKEN_INDEX).sum() == 1
    assert item['pixel_values'].shape == (1, 3, 32, 32) and item['pixel_values'].dtype == torch.float32
    ids, labels = encode_conversation(GOOD[0]['conversations'], tiny(), 'qwen2')
    assert item['input_ids'].tolist() == ids and item['labels'].tolist() == labels

    text = ds[1]
    assert text['pixel_values'] is None and (text['input_ids'] == IMAGE_TOKEN_INDEX).sum() == 0
    two = ds[2]
    assert two['pixel_values'].shape == (2, 3, 32, 32)
    assert (two['input_ids'] == IMAGE_TOKEN_INDEX).sum() == 2
    # order: the grey image first, the blue one second
    assert two['pixel_values'][0].std() < two['pixel_values'][1].std() + 1e-6
    assert ds[-1]['id'] == 'mm2'
    with pytest.raises(IndexError):
        ds[3]


def test_jsonl_and_several_files(tmp_path, image_dir):
    write_json(tmp_path / 'a.json', GOOD[:2])
    write_json(tmp_path / 'b.jsonl', GOOD[2:], jsonl=True)
    ds = LLaVADataset([str(tmp_path / 'a.json'), tmp_path / 'b.jsonl'], image_dir, tiny(), 'qwen2',
                      processor(), num_image_tokens=4)
    assert len(ds) == 3
    assert [ds[i]['id'] for i in range(3)] == ['mm1', 'text1', 'mm2']
    assert ds.metainfo['num_samples'] == 3


def test_builds_tokenizer_and_processor_from_config_dicts(tmp_path, image_dir):
    tokenizer_dir = tmp_path / 'tok'
    tiny().save_pretrained(tokenizer_dir)
    from transformers import AutoTokenizer
    ds = make(tmp_path, image_dir, GOOD,
              tokenizer=dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=str(tokenizer_dir)),
              image_processor=dict(type=CLIPImageProcessor, size={'shortest_edge': 32},
                                   crop_size={'height': 32, 'width': 32}))
    assert ds[0]['input_ids'].tolist() == make(tmp_path, image_dir, GOOD, name='d2.json')[0]['input_ids'].tolist()
    with pytest.raises(TypeError, match='pass the callable itself'):
        make(tmp_path, image_dir, GOOD, tokenizer=dict(type='AutoTokenizer'))


def test_pad_to_square_changes_pixels(tmp_path, image_dir):
    padded = make(tmp_path, image_dir, GOOD[:1])[0]['pixel_values']
    stretched = make(tmp_path, image_dir, GOOD[:1], pad_image_to_square=False)[0]['pixel_values']
    assert padded.shape == stretched.shape
    assert not torch.allclose(padded, stretched)


# ------------------------------------------------------------------------------ laziness and lengths
class CountingTokenizer:
    """Wraps a tokenizer and counts every call that tokenizes."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0

    def encode(self, *args, **kwargs):
        self.calls += 1
        return self.tok.encode(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tok(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_start_up_is_lazy(tmp_path, image_dir, monkeypatch):
    items = [dict(GOOD[i % 3], id=f's{i}') for i in range(300)]
    parsed = []
    real_loads = json_index.json.loads
    monkeypatch.setattr(json_index.json, 'loads', lambda *a, **k: parsed.append(1) or real_loads(*a, **k))
    counting = CountingTokenizer(tiny())
    ds = make(tmp_path, image_dir, items, tokenizer=counting)
    assert counting.calls == 0 and parsed == []  # no tokenization, no record parsed
    assert len(ds) == 300
    ds[5]
    assert counting.calls > 0 and len(parsed) == 1


def test_length_estimates_and_modality_signs(tmp_path, image_dir):
    ds = make(tmp_path, image_dir, GOOD, name='data.jsonl', num_image_tokens=100)
    assert ds.modality_lengths.tolist()[1] < 0  # text-only
    assert ds.modality_lengths[0] > 0 and ds.modality_lengths[2] > 0
    np.testing.assert_array_equal(np.abs(ds.modality_lengths), ds.lengths)
    # images dominate the estimate: one image ≈ 100, two images ≈ 200
    assert 100 < ds.lengths[0] < 200 and 200 < ds.lengths[2] < 300
    # the estimate is within a small factor of the true effective length
    for i in range(3):
        ids = ds[i]['input_ids']
        true = len(ids) + 99 * int((ids == IMAGE_TOKEN_INDEX).sum())
        assert 0.5 < ds.lengths[i] / true < 2.0


# ------------------------------------------------------------------------------ bad input
BAD_CASES = {
    'missing_image': ({'id': 'bad', 'image': 'nope.png', 'conversations': conv('<image>\nq', 'a')},
                      "image 'nope.png' not found at"),
    'unreadable_image': ({'id': 'bad', 'image': 'broken.png', 'conversations': conv('<image>\nq', 'a')},
                         'broken.png.*cannot be read'),
    'image_token_without_image': ({'id': 'bad', 'conversations': conv('<image>\nq', 'a')},
                                  'no `image` field'),
    'image_without_image_token': ({'id': 'bad', 'image': 'red.png', 'conversations': conv('q', 'a')},
                                  r'1 image\(s\) but no <image>'),
    'image_count_mismatch': ({'id': 'bad', 'image': ['red.png', 'grey.png'],
                              'conversations': conv('<image>\nq', 'a')}, r'1 <image> in the text but 2'),
    'empty_conversation': ({'id': 'bad', 'image': 'red.png', 'conversations': []}, 'no conversation'),
    'unknown_speaker': ({'id': 'bad', 'conversations': [{'from': 'human', 'value': 'q'},
                                                        {'from': 'robot', 'value': 'a'}]},
                        "unknown speaker 'robot'"),
    'no_supervised_tokens': ({'id': 'bad', 'conversations': [{'from': 'human', 'value': 'q'}]},
                             'no gpt turn'),
    'too_long': ({'id': 'bad', 'image': 'red.png',
                  'conversations': conv('word ' * 200 + '<image>\nq', 'a')}, 'need .* tokens, more than max_length=40'),
    'starts_with_gpt': ({'id': 'bad', 'conversations': [{'from': 'gpt', 'value': 'Hello.'}] + conv('q', 'a')},
                        'starts with a gpt'),
    'empty_reply': ({'id': 'bad', 'conversations': conv('q', 'a') + conv('more?', '  ')},
                    r'turn 3 \(gpt\) has no text'),
    'reply_truncated_away': ({'id': 'bad', 'conversations': conv('word ' * 60, 'a')},
                             'no supervised .* token is left: the first reply starts at token'),
}


@pytest.mark.parametrize('cause', sorted(BAD_CASES))
def test_bad_sample_raises_with_location_and_fix(tmp_path, image_dir, cause):
    bad, pattern = BAD_CASES[cause]
    ds = make(tmp_path, image_dir, [GOOD[0], bad, GOOD[1]], max_length=40)
    with pytest.raises(BadSampleError, match=pattern) as info:
        ds[1]
    message = str(info.value)
    assert info.value.cause == cause
    assert 'data.json, item 1 (line ' in message and "sample id 'bad'" in message
    assert "on_bad_sample='skip'" in message
    if cause == 'missing_image':
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, MissingImageError)
        assert str(image_dir / 'nope.png') in message
    assert ds[0]['id'] == 'mm1'  # the good neighbours still load


def test_malformed_jsonl_line_names_file_and_line(tmp_path, image_dir):
    path = tmp_path / 'data.jsonl'
    path.write_text(json.dumps(GOOD[0]) + '\n{"id": "broken", \n' + json.dumps(GOOD[1]) + '\n')
    ds = LLaVADataset(path, image_dir, tiny(), 'qwen2', processor(), num_image_tokens=4)
    with pytest.raises(BadSampleError, match=r'data\.jsonl, line 2: malformed JSON') as info:
        ds[1]
    assert info.value.cause == 'malformed_json'
    assert ds[2]['id'] == 'text1'


def test_record_that_is_not_an_object(tmp_path, image_dir):
    path = tmp_path / 'data.jsonl'
    path.write_text(json.dumps(GOOD[1]) + '\n' + '[1, 2]\n')
    ds = LLaVADataset(path, image_dir, tiny(), 'qwen2', processor())
    with pytest.raises(BadSampleError, match='line 2, sample #1: expected a JSON object'):
        ds[1]


def test_insert_missing_image_token_option(tmp_path, image_dir):
    bad, _ = BAD_CASES['image_without_image_token']
    ds = make(tmp_path, image_dir, [bad], insert_missing_image_token=True)
    item = ds[0]
    assert (item['input_ids'] == IMAGE_TOKEN_INDEX).sum() == 1 and item['pixel_values'].shape[0] == 1


def test_skip_counts_logs_once_per_cause_and_returns_next(tmp_path, image_dir, monkeypatch):
    logged = []
    monkeypatch.setattr(bad_samples, 'print_log', lambda msg, **kw: logged.append((msg, kw)))
    items = [GOOD[0], BAD_CASES['missing_image'][0], dict(BAD_CASES['missing_image'][0], id='bad2'),
             GOOD[1], BAD_CASES['unknown_speaker'][0], GOOD[2], BAD_CASES['too_long'][0]]
    ds = make(tmp_path, image_dir, items, on_bad_sample='skip', max_length=120)
    assert ds[1]['id'] == 'text1'  # items 1 and 2 are bad: item 3 instead
    assert ds[2]['id'] == 'text1'
    assert ds[4]['id'] == 'mm2'
    assert ds[6]['id'] == 'mm1'  # wraps around
    assert ds.num_skipped == 5
    assert ds.skip_counts == {'missing_image': 3, 'unknown_speaker': 1, 'too_long': 1}
    logged = [(msg, kw) for msg, kw in logged if msg.startswith('Skipped')]  # not the duplicate ids
    assert len(logged) == 3  # once per cause
    assert all(kw.get('logger') == 'current' and kw.get('level') == 30 for _, kw in logged)
    # skip mode says what was skipped and how to see the others, not "set on_bad_sample='skip'"
    assert "Set on_bad_sample='skip'" not in logged[0][0]
    assert 'used the next one instead' in logged[0][0] and "on_bad_sample='raise'" in logged[0][0]
    assert 'missing_image' in logged[0][0] and 'nope.png' in logged[0][0]


def test_skip_with_only_bad_samples(tmp_path, image_dir):
    ds = make(tmp_path, image_dir, [BAD_CASES['missing_image'][0]], on_bad_sample='skip')
    with pytest.raises(RuntimeError,
                       match=r"Every one of the 1 samples of .*data.json.* is bad .*on_bad_sample='raise'"):
        ds[0]


def test_constructor_errors(tmp_path, image_dir):
    with pytest.raises(ValueError, match="on_bad_sample must be 'raise' or 'skip'"):
        make(tmp_path, image_dir, GOOD, on_bad_sample='ignore')
    with pytest.raises(ValueError, match='Unknown chat template'):
        make(tmp_path, image_dir, GOOD, template='chat_ml')
    with pytest.raises(FileNotFoundError, match='image_folder'):
        LLaVADataset(write_json(tmp_path / 'd.json', GOOD), tmp_path / 'nowhere', tiny(), 'qwen2', processor())
    with pytest.raises(FileNotFoundError, match='does not exist'):
        LLaVADataset(tmp_path / 'missing.json', image_dir, tiny(), 'qwen2', processor())
    with pytest.raises(ValueError, match='No samples'):
        LLaVADataset(write_json(tmp_path / 'e.json', []), image_dir, tiny(), 'qwen2', processor())


# ------------------------------------------------------------------------------ truncation
def test_truncation_never_splits_an_image(tmp_path, image_dir):
    long_answer = ' '.join(['circle'] * 200)
    item = {'id': 'long', 'image': 'red.png',
            'conversations': conv('<image>\nDescribe.', long_answer) + conv('<image>\nAgain?', 'Yes.')}
    item['image'] = ['red.png', 'grey.png']
    full_ids, _ = encode_conversation(item['conversations'], tiny(), 'qwen2')
    second_image = [i for i, t in enumerate(full_ids) if t == IMAGE_TOKEN_INDEX][1]
    nit = 8
    # room for everything up to and including the second image, but not the rest
    max_length = second_image + 1 + 2 * (nit - 1) + 3
    ds = make(tmp_path, image_dir, [item], num_image_tokens=nit, max_length=max_length)
    out = ds[0]
    ids = out['input_ids']
    assert len(ids) + (nit - 1) * int((ids == IMAGE_TOKEN_INDEX).sum()) == max_length
    assert (ids == IMAGE_TOKEN_INDEX).sum() == 2 and out['pixel_values'].shape[0] == 2
    assert ids.tolist() == full_ids[:len(ids)]
    assert (out['labels'] != IGNORE_INDEX).any()
    # one token less and the second image no longer fits: the sample is bad, not cut through
    ds = make(tmp_path, image_dir, [item], name='d2.json', num_image_tokens=nit,
              max_length=second_image + 2 * (nit - 1))
    with pytest.raises(BadSampleError, match='too_long|need') as info:
        ds[0]
    assert info.value.cause == 'too_long'


def test_truncation_leaving_no_labels_is_bad(tmp_path, image_dir):
    item = {'id': 'q', 'image': 'red.png',
            'conversations': conv('<image>\n' + 'word ' * 30, 'a')}
    ids, _ = encode_conversation(item['conversations'], tiny(), 'qwen2')
    ds = make(tmp_path, image_dir, [item], num_image_tokens=4, max_length=len(ids))
    with pytest.raises(BadSampleError, match='no supervised'):
        ds[0]
    ok = make(tmp_path, image_dir, [item], name='ok.json', num_image_tokens=4, max_length=len(ids) + 3)
    assert len(ok[0]['input_ids']) == len(ids)


# ------------------------------------------------------------------------------ concat, pickling, workers
def test_concat_dataset_keeps_lengths(tmp_path, image_dir):
    a = make(tmp_path, image_dir, GOOD[:2], name='a.json')
    b = make(tmp_path, image_dir, GOOD[2:], name='b.json')
    both = ConcatDataset([a, b])
    assert len(both) == 3 and both[2]['id'] == 'mm2'
    np.testing.assert_array_equal(both.modality_lengths,
                                  np.concatenate([a.modality_lengths, b.modality_lengths]))
    np.testing.assert_array_equal(both.lengths, np.concatenate([a.lengths, b.lengths]))
    with pytest.raises(TypeError, match='modality_lengths'):
        ConcatDataset([a, [1, 2]])


def test_pickles_and_loads_in_worker_processes(tmp_path, image_dir):
    from mllm_align.data import llava_collate_fn
    ds = make(tmp_path, image_dir, GOOD)
    again = pickle.loads(pickle.dumps(ds))
    assert again[2]['input_ids'].tolist() == ds[2]['input_ids'].tolist()
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=llava_collate_fn)
    batch = next(iter(loader))
    assert batch['data']['input_ids'].shape[0] == 3
    assert batch['data']['pixel_values'].shape == (3, 3, 32, 32)


def test_skip_mode_error_message_has_no_skip_hint(tmp_path, image_dir):
    ds = make(tmp_path, image_dir, [BAD_CASES['empty_reply'][0], GOOD[1]], on_bad_sample='skip')
    with pytest.raises(BadSampleError) as info:
        ds._load(0)
    assert "on_bad_sample='skip'" not in str(info.value) and "sample id 'bad'" in str(info.value)
    assert ds[0]['id'] == 'text1' and ds.skip_counts == {'empty_reply': 1}


# ------------------------------------------------------------------------------ images
def test_decompression_bomb_is_a_bad_sample_named_and_counted(tmp_path, image_dir):
    from tests.data.test_image_loading import write_bomb_png
    write_bomb_png(image_dir / 'bomb.png')
    bomb = {'id': 'boom', 'image': 'bomb.png', 'conversations': conv('<image>\nq', 'a')}
    ds = make(tmp_path, image_dir, [bomb, GOOD[0]], name='data.jsonl')
    with pytest.raises(BadSampleError) as info:
        ds[0]
    message = str(info.value)
    assert info.value.cause == 'image_too_large'
    for part in ('data.jsonl, line 1', "sample id 'boom'", 'bomb.png', '20000×20000', '89,478,485',
                 'max_image_pixels'):
        assert part in message, part
    skip = make(tmp_path, image_dir, [bomb, GOOD[0]], name='s.jsonl', on_bad_sample='skip')
    item = skip[0]
    assert item['id'] == 'mm1' and item['skipped'] == {'image_too_large': 1}
    small_limit = make(tmp_path, image_dir, [GOOD[0]], name='l.json', max_image_pixels=40 * 20 - 1)
    with pytest.raises(BadSampleError, match='red.png.*40×20'):
        small_limit[0]
    assert make(tmp_path, image_dir, [GOOD[0]], name='n.json', max_image_pixels=None)[0]['id'] == 'mm1'
    with pytest.raises(ValueError, match='max_image_pixels must be a positive int or None'):
        make(tmp_path, image_dir, GOOD, max_image_pixels=0)


def test_16_bit_image_gives_the_pixels_of_its_8_bit_equivalent(tmp_path, image_dir):
    Image.fromarray(np.full((20, 40), 30000, dtype=np.uint16)).save(image_dir / 'deep.png')
    Image.new('L', (40, 20), 117).save(image_dir / 'grey117.png')  # round(30000 / 257) = 117
    items = [dict(GOOD[0], id='deep', image='deep.png'), dict(GOOD[0], id='ref', image='grey117.png')]
    ds = make(tmp_path, image_dir, items)
    torch.testing.assert_close(ds[0]['pixel_values'], ds[1]['pixel_values'], rtol=0, atol=0)


def test_transparent_pixels_follow_alpha_background(tmp_path, image_dir):
    Image.new('RGBA', (32, 32), (0, 0, 0, 0)).save(image_dir / 'clear.png')  # hidden colour: black
    Image.new('RGB', (32, 32), (255, 255, 255)).save(image_dir / 'white.png')
    items = [dict(GOOD[0], id='clear', image='clear.png'), dict(GOOD[0], id='white', image='white.png')]
    ds = make(tmp_path, image_dir, items)
    torch.testing.assert_close(ds[0]['pixel_values'], ds[1]['pixel_values'], rtol=0, atol=0)
    mean = make(tmp_path, image_dir, items, name='m.json', alpha_background='mean')
    assert mean[0]['pixel_values'].abs().max() < 0.02  # the processor mean normalises to ≈ 0
    with pytest.raises(ValueError, match="alpha_background must be 'white', 'mean'"):
        make(tmp_path, image_dir, items, alpha_background='black')


# ------------------------------------------------------------------------------ notices
def test_truncated_samples_carry_a_notice(tmp_path, image_dir):
    long = {'id': 'long', 'conversations': conv('q', ' '.join(['circle'] * 80))}
    fits = len(encode_conversation(GOOD[1]['conversations'], tiny(), 'qwen2')[0])
    ds = make(tmp_path, image_dir, [long, GOOD[1]], max_length=fits)
    item = ds[0]
    assert len(item['input_ids']) == fits and item['notices'] == {'truncated': 1}
    assert 'notices' not in ds[1] and ds.notice_counts == {'truncated': 1}


def test_duplicate_ids_are_found_over_files_without_parsing(tmp_path, image_dir, monkeypatch):
    nested = {'id': 'n1', 'meta': {'id': 'mm1'}, 'conversations': [{'id': 'text1', **conv('q', 'a')[0]},
                                                                    conv('q', 'a')[1]]}
    escaped = {'id': 'say "hi"', 'conversations': conv('q', 'a')}
    long_id = 'x' * 100
    write_json(tmp_path / 'a.json', [GOOD[0], nested, escaped, {'id': 7, 'conversations': conv('q', 'a')},
                                     {'id': long_id, 'conversations': conv('q', 'a')},
                                     {'id': None, 'conversations': conv('q', 'a')}])
    write_json(tmp_path / 'b.jsonl', [dict(GOOD[1], id='mm1'), dict(GOOD[1], id='7'),
                                      dict(GOOD[1], id='say "hi"'), dict(GOOD[1], id=long_id),
                                      dict(GOOD[1], id='mm1'), {'conversations': conv('q', 'a')},
                                      {'meta': {'id': 'mm1'}, 'id': 'unique', 'conversations': conv('q', 'a')},
                                      {'id': None, 'conversations': conv('q', 'a')}], jsonl=True)
    parsed = []
    real_loads = json_index.json.loads
    monkeypatch.setattr(json_index.json, 'loads', lambda *a, **k: parsed.append(1) or real_loads(*a, **k))
    ds = LLaVADataset([tmp_path / 'a.json', tmp_path / 'b.jsonl'], image_dir, tiny(), 'qwen2', processor())
    dup = ds.duplicate_ids
    # mm1 ×3, 7 / "7", 'say "hi"' ×2, the long id ×2; nested ids and null ids do not count
    assert (dup.num_records, dup.num_ids) == (5, 4)
    # parsed: only the 10 records whose (first) id hash repeats, to confirm them (a JSONL file is
    # involved), and the 3 examples shown -- never all 15 records
    assert len(parsed) <= 10 + 3 + 1
    assert [i for i, _ in dup.examples] == ['mm1', 'say "hi"', '7']  # in order of first occurrence
    assert dup.examples[0][1] == (f'{tmp_path / "a.json"}, item 0 (line 2)', f'{tmp_path / "b.jsonl"}, line 1',
                                  f'{tmp_path / "b.jsonl"}, line 5')
    text = dup.describe()
    assert '5 records repeat the `id`' in text and 'All of them are trained on' in text
    assert make(tmp_path, image_dir, GOOD, name='c.json').duplicate_ids.num_records == 0


# ------------------------------------------------------------------------------ Qwen2-VL (patch-grid processor)
def qwen2_vl_processor():
    from transformers import Qwen2VLImageProcessor
    return Qwen2VLImageProcessor(min_pixels=16 * 16, max_pixels=32 * 32, patch_size=4, temporal_patch_size=2,
                                 merge_size=2)


def test_qwen2_vl_items_carry_patches_and_grids_and_collate(tmp_path, image_dir):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from mllm_align.data import llava_collate_fn
    tok = tiny('qwen2_vl')
    ds = make(tmp_path, image_dir, GOOD, tokenizer=tok, template='qwen2_vl', image_processor=qwen2_vl_processor(),
              pad_image_to_square=False, num_image_tokens=16)
    sizes = {'red.png': (20, 40), 'grey.png': (16, 16), 'blue.png': (30, 20)}  # (h, w)

    def grid(name):
        h, w = smart_resize(*sizes[name], factor=8, min_pixels=256, max_pixels=1024)
        return [1, h // 4, w // 4]

    one, text, two = ds[0], ds[1], ds[2]
    assert one['image_grid_thw'].tolist() == [grid('red.png')]
    assert one['pixel_values'].shape == (int(np.prod(grid('red.png'))), 3 * 2 * 4 * 4)
    assert two['image_grid_thw'].tolist() == [grid('grey.png'), grid('blue.png')]
    assert text['pixel_values'] is None and 'image_grid_thw' not in text
    vision_start = tok.convert_tokens_to_ids('<|vision_start|>')
    ids = one['input_ids'].tolist()
    assert ids[ids.index(IMAGE_TOKEN_INDEX) - 1] == vision_start
    batch = llava_collate_fn([one, text, two])['data']
    assert batch['image_grid_thw'].tolist() == [grid('red.png'), grid('grey.png'), grid('blue.png')]
    assert batch['pixel_values'].shape[0] == sum(int(np.prod(grid(n))) for n in ('red.png', 'grey.png', 'blue.png'))


def test_qwen2_vl_truncation_counts_each_images_own_tokens(tmp_path, image_dir):
    """red.png (40×20) becomes 16×40 px = 4×10 patches = 10 tokens (not num_image_tokens=100): the sample fits
    where a fixed count would not."""
    tok = tiny('qwen2_vl')
    item = [{'id': 'r', 'image': 'red.png', 'conversations': conv('<image>\nWhat color?', 'Red.')}]
    ids, _ = encode_conversation(item[0]['conversations'], tok, 'qwen2_vl')
    budget = len(ids) - 1 + 10  # every text token + the image's 10 tokens
    ds = make(tmp_path, image_dir, item, tokenizer=tok, template='qwen2_vl', image_processor=qwen2_vl_processor(),
              pad_image_to_square=False, num_image_tokens=100, max_length=budget)
    assert len(ds[0]['input_ids']) == len(ids) and 'notices' not in ds[0]
    short = make(tmp_path, image_dir, item, name='short.json', tokenizer=tok, template='qwen2_vl',
                 image_processor=qwen2_vl_processor(), pad_image_to_square=False, max_length=budget - 2)
    assert short[0]['notices'] == {'truncated': 1} and len(short[0]['input_ids']) == len(ids) - 2


# ------------------------------------------------------------------------------ tokenised-text cache
def _same_items(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def _cache_mix() -> list[dict]:
    bad = [BAD_CASES[c][0] for c in ('missing_image', 'empty_reply', 'too_long', 'reply_truncated_away')]
    long = {'id': 'long', 'conversations': conv('Hello there!', ' '.join(['circle'] * 60))}  # truncated notice
    again = [dict(g, id=g['id'] + 'b') for g in GOOD]
    return GOOD + [dict(b, id=f'bad{i}') for i, b in enumerate(bad)] + [long] + again


def test_text_cache_gives_the_uncached_items(tmp_path, image_dir, monkeypatch):
    items = _cache_mix()
    plain = make(tmp_path, image_dir, items, on_bad_sample='skip', max_length=40, text_cache_mib=0)
    want = [plain[i] for i in range(len(items))]
    counting = CountingTokenizer(tiny())
    ds = make(tmp_path, image_dir, items, on_bad_sample='skip', max_length=40, tokenizer=counting)
    for i in range(len(items)):
        _same_items(ds[i], want[i])
    assert any('skipped' in x for x in want) and any('notices' in x for x in want)  # the mix covers both
    calls, parsed = counting.calls, []
    real_loads = json_index.json.loads
    monkeypatch.setattr(json_index.json, 'loads', lambda *a, **k: parsed.append(1) or real_loads(*a, **k))
    for i in reversed(range(len(items))):  # another epoch, another order
        _same_items(ds[i], want[i])
    # good text is neither re-parsed nor re-tokenised; a text-bad sample (empty_reply) is parsed each time it is met
    assert counting.calls == calls and len(parsed) == plain.skip_counts['empty_reply'] and ds.text_cache.hits > 0
    assert ds.skip_counts == {cause: 2 * n for cause, n in plain.skip_counts.items()}
    assert ds.notice_counts['truncated'] == 2 * plain.notice_counts['truncated']
    assert len(plain.text_cache) == 0 and plain.text_cache.nbytes == 0


def test_text_cache_stays_within_its_bound(tmp_path, image_dir):
    items = [dict(GOOD[i % 3], id=f's{i}') for i in range(60)]
    ds = make(tmp_path, image_dir, items, text_cache_mib=4000 / 2 ** 20)  # 4000 bytes
    for i in range(len(items)):
        ds[i]
    assert 0 < len(ds.text_cache) < len(items) and ds.text_cache.nbytes <= 4000
    cached = sorted(ds.text_cache.entries)
    assert cached == list(range(len(cached)))  # the first ones kept, none evicted
    sample_id, images, ids = ds.text_cache.entries[2]
    assert sample_id == 's2' and images == ('grey.png', 'blue.png') and ids.dtype == np.int32
    assert ids.tolist() == list(encode_conversation(GOOD[2]['conversations'], tiny(), 'qwen2'))
    with pytest.raises(ValueError, match='text_cache_mib'):
        make(tmp_path, image_dir, items, text_cache_mib=-1)


def _collate_with_worker_cache(instances):
    from mllm_align.data import llava_collate_fn
    batch = llava_collate_fn(instances)
    info = torch.utils.data.get_worker_info()
    batch['worker_cache'] = (info.id, info.dataset.text_cache.hits, len(info.dataset.text_cache))
    return batch


def test_persistent_workers_keep_their_cache_and_send_skip_counts(tmp_path, image_dir):
    from mllm_align.engine.hooks.dataset_info_hook import DatasetInfoHook
    items = _cache_mix()
    ds = make(tmp_path, image_dir, items, on_bad_sample='skip', max_length=40)
    plain = make(tmp_path, image_dir, items, on_bad_sample='skip', max_length=40, text_cache_mib=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, persistent_workers=True,
                                         prefetch_factor=2, collate_fn=_collate_with_worker_cache)
    epochs = [list(loader) for _ in range(2)]
    assert len(ds.text_cache) == 0  # the main process read nothing: the workers did
    want = [plain[i] for i in range(len(items))]
    for epoch in epochs:
        got = [x for b in epoch for x in zip(b['data']['sample_ids'], b['data']['input_ids'])]
        assert [i for i, _ in got] == [x['id'] for x in want]  # sequential order, whatever the worker
        for (_, ids), x in zip(got, want):
            assert ids[:len(x['input_ids'])].tolist() == x['input_ids'].tolist()
    first, second = ({b['worker_cache'][0]: b['worker_cache'][1:] for b in e} for e in epochs)
    assert first.keys() == {0, 1} and all(second[w][0] > first[w][0] for w in second)  # epoch 2 hits
    skipped = [b['data'].get('skipped', {}) for b in epochs[0]]
    total: dict[str, int] = {}
    for counts in skipped:
        for cause, n in counts.items():
            total[cause] = total.get(cause, 0) + n
    assert total == dict(plain.skip_counts)  # counted in the workers, carried by the batches

    class Runner:
        logger = __import__('logging').getLogger('cache_worker_test')
        iter = 0
    hook, logged = DatasetInfoHook(), []
    Runner.logger.warning = lambda msg, *a, **k: logged.append(msg)
    for k, batch in enumerate(epochs[0]):
        hook.after_train_iter(Runner, k, batch)
    hook.after_train(Runner)
    assert any(f'{sum(total.values())} bad training samples were skipped' in m for m in logged)
