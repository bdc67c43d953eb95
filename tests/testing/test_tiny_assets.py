"""Tests for mllm_align/testing/tiny_assets.py and mllm_align/testing/shapes.py.

One module-scoped build is shared by most tests; determinism tests build a second time.
"""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from mllm_align.testing import shapes, tiny_assets
from mllm_align.testing.tiny_assets import (
    LLM_KINDS,
    VISION_KINDS,
    TinyAssets,
    build_tiny_assets,
    summarize_tiny_assets,
    tiny_assets_paths,
)

_CAPTION_RE = re.compile(r'an? (\w+) (\w+) (on the left|on the right|at the top|at the bottom|'
                         r'in the center)')
_PHRASE_TO_POSITION = {v: k for k, v in shapes.POSITION_PHRASES.items()}


@pytest.fixture(scope='module')
def assets(tiny_assets: TinyAssets) -> TinyAssets:
    return tiny_assets  # the default build at data/tiny (tests/conftest.py)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob('*')) if p.is_file()}


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding='utf-8'))


# ----------------------------------------------------------------------------------------------
# Models, tokenizers, processors
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kind', LLM_KINDS)
def test_llm_loads_and_runs(assets: TinyAssets, kind: str) -> None:
    path = assets.llm(kind)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = model.config
    assert config.vocab_size == len(tokenizer)
    assert config.tie_word_embeddings is False
    assert config.hidden_size == tiny_assets.LLM_HIDDEN_SIZE
    assert config.max_position_embeddings == 2048
    assert config.pad_token_id == tokenizer.pad_token_id is not None
    assert config.eos_token_id == tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:
        assert config.bos_token_id == tokenizer.bos_token_id
    ids = tokenizer('a red circle on the left.', return_tensors='pt').input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize('kind, stops', [
    ('llama', ['<|eot_id|>', '<|end_of_text|>']),
    ('qwen2', ['<|im_end|>', '<|endoftext|>']),
])
def test_generation_config_and_chat_template(assets: TinyAssets, kind: str,
                                             stops: list[str]) -> None:
    path = assets.llm(kind)
    tokenizer = AutoTokenizer.from_pretrained(path)
    generation = GenerationConfig.from_pretrained(path)
    assert generation.eos_token_id == tokenizer.convert_tokens_to_ids(stops)
    assert tokenizer.chat_template
    text = tokenizer.apply_chat_template(
        [{'role': 'user', 'content': 'What colour is the shape?'}], tokenize=False,
        add_generation_prompt=True)
    assert 'What colour is the shape?' in text


def test_vicuna_tokenizer_special_tokens(assets: TinyAssets) -> None:
    tokenizer = AutoTokenizer.from_pretrained(assets.llm_vicuna)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ('<s>', '</s>')
    generation = GenerationConfig.from_pretrained(assets.llm_vicuna)
    assert generation.eos_token_id == tokenizer.eos_token_id


@pytest.mark.parametrize('kind', LLM_KINDS)
def test_tokenizer_covers_dataset_text(assets: TinyAssets, kind: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(assets.llm(kind))
    for text in shapes.corpus_texts(assets.sft_json)[:200]:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids).strip() == text
        assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
        assert len(ids) < 4 * len(text.split()) + 4  # real merges, not one token per byte


@pytest.mark.parametrize('kind', VISION_KINDS)
def test_vision_tower_loads_and_matches_processor(assets: TinyAssets, kind: str) -> None:
    path = assets.vision(kind)
    model = AutoModel.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    image = Image.open(assets.image_folder / _load(assets.pretrain_json)[0]['image'])
    pixel_values = processor(images=image, return_tensors='pt')['pixel_values']
    size = model.config.image_size
    assert size == tiny_assets.VISION_IMAGE_SIZE
    assert pixel_values.shape == (1, 3, size, size)
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_hidden_states=True)
    grid = size // model.config.patch_size
    num_cls = 0 if kind == 'siglip' else 1
    assert grid * grid == tiny_assets.VISION_NUM_PATCHES == 16
    assert out.last_hidden_state.shape == (1, grid * grid + num_cls, model.config.hidden_size)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    if kind == 'clip':
        assert model.config.hidden_act == 'quick_gelu'
        assert processor.crop_size == {'height': size, 'width': size}


def test_summary_rows(assets: TinyAssets) -> None:
    from mllm_align.testing.tiny_assets import build_tiny_qwen2_vl
    build_tiny_qwen2_vl(assets.root)  # a no-op when built: the row is listed once the directory exists
    rows = {row['name']: row for row in summarize_tiny_assets(assets)}
    assert set(rows) == {*(f'llm/{k}' for k in LLM_KINDS), *(f'vision/{k}' for k in VISION_KINDS),
                         'shapes', 'qwen2_vl'}
    model = AutoModelForCausalLM.from_pretrained(assets.llm_llama)
    assert rows['llm/llama']['params'] == sum(p.numel() for p in model.parameters())
    assert '16 patches' in rows['vision/clip']['detail']


def test_paths_and_accessors(assets: TinyAssets, tmp_path: Path) -> None:
    assert tiny_assets_paths(assets.root) == assets
    for kind in LLM_KINDS:
        assert (assets.llm(kind) / 'model.safetensors').is_file()
    for kind in VISION_KINDS:
        assert (assets.vision(kind) / 'preprocessor_config.json').is_file()
    with pytest.raises(ValueError, match='Unknown LLM kind'):
        assets.llm('gpt2')
    with pytest.raises(ValueError, match='Unknown vision kind'):
        assets.vision('resnet')


# ----------------------------------------------------------------------------------------------
# Build mechanics: determinism, idempotence, atomicity
# ----------------------------------------------------------------------------------------------
def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    small = dict(num_train=16, num_eval=4, llm_warmup_steps=20)  # warm-up included, kept short
    first = _files(build_tiny_assets(tmp_path / 'first', **small).root)
    other = build_tiny_assets(tmp_path / 'again', **small)
    assert _files(other.root) == first
    # forcing a rebuild in place gives the same bytes too
    build_tiny_assets(tmp_path / 'again', force=True, **small)
    assert _files(other.root) == first


def test_second_call_is_a_no_op(assets: TinyAssets, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError('rebuilt although the stamp matches')

    monkeypatch.setattr(tiny_assets, '_build_into', fail)
    assert build_tiny_assets(assets.root) == assets


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(out: Path, params: dict) -> None:
        (out / 'llm').mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_assets, '_build_into', interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_assets(tmp_path / 'root')
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='does not look like tiny assets'):
        build_tiny_assets(tmp_path, num_train=8, num_eval=2, llm_warmup_steps=2)
    assert (tmp_path / 'notes.txt').read_text() == 'mine'


def test_parameter_change_rebuilds_and_cleans_up(tmp_path: Path) -> None:
    small = build_tiny_assets(tmp_path / 'root', num_train=8, num_eval=2, llm_warmup_steps=2)
    assert len(_load(small.pretrain_json)) == 8
    stale = tmp_path / '.root.building-1-deadbeef'  # left by a killed build
    stale.mkdir()
    bigger = build_tiny_assets(tmp_path / 'root', num_train=12, num_eval=2, llm_warmup_steps=2)
    assert len(_load(bigger.pretrain_json)) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ['root']  # no temp/old dirs left


def test_concurrent_builds_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three builders of one root at once: one builds, the others wait on the lock and reuse it.

    Threads stand in for processes: each builder opens the lock file itself, and ``flock`` locks
    belong to the open file, so they exclude each other exactly as separate processes do.
    """
    calls = []
    real_build = tiny_assets._build_into

    def counting_build(out: Path, params: dict) -> None:
        calls.append(out)
        real_build(out, params)

    monkeypatch.setattr(tiny_assets, '_build_into', counting_build)
    root = tmp_path / 'shared'
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: build_tiny_assets(root, num_train=16, num_eval=4, llm_warmup_steps=2),
                                range(3)))
    assert results == [tiny_assets_paths(root.absolute())] * 3
    if tiny_assets.fcntl is not None:
        assert len(calls) == 1
    reference = build_tiny_assets(tmp_path / 'serial', num_train=16, num_eval=4, llm_warmup_steps=2)
    assert _files(root) == _files(reference.root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['serial', 'shared']


# ----------------------------------------------------------------------------------------------
# The shapes dataset
# ----------------------------------------------------------------------------------------------
def _check_llava_sample(sample: dict, image_folder: Path, first_prefix: str) -> int:
    assert isinstance(sample['id'], str)
    conversations = sample['conversations']
    assert len(conversations) >= 2 and len(conversations) % 2 == 0
    for i, turn in enumerate(conversations):
        assert turn['from'] == ('human' if i % 2 == 0 else 'gpt')
        assert isinstance(turn['value'], str) and turn['value']
    images = sample.get('image')
    images = [] if images is None else [images] if isinstance(images, str) else images
    for rel in images:
        assert (image_folder / rel).is_file(), rel
    placeholders = sum(turn['value'].count('<image>') for turn in conversations)
    assert placeholders == len(images) == conversations[0]['value'].count('<image>')
    if images:
        assert conversations[0]['value'].startswith(first_prefix * len(images))
    return len(images)


def test_pretrain_json_format(assets: TinyAssets) -> None:
    data = _load(assets.pretrain_json)
    assert len(data) == 600
    for sample in data:
        assert _check_llava_sample(sample, assets.image_folder, '<image>') == 1
        assert sample['conversations'][0]['value'] == '<image>'
        assert len(sample['conversations']) == 2


def test_sft_json_format(assets: TinyAssets) -> None:
    data = _load(assets.sft_json)
    counts = [_check_llava_sample(s, assets.image_folder, '<image>\n') for s in data]
    assert len({s['id'] for s in data}) == len(data)
    text_only = counts.count(0) / len(counts)
    assert 0.07 <= text_only <= 0.13
    assert counts.count(2) >= 10
    assert counts.count(1) == 600
    assert max(len(s['conversations']) for s in data) >= 6  # multi-turn
    jsonl = [json.loads(line) for line in assets.sft_jsonl.read_text().splitlines()]
    assert jsonl == data


def test_two_image_answers_are_true(assets: TinyAssets) -> None:
    annotations = json.loads(assets.annotations_json.read_text())
    pairs = [s for s in _load(assets.sft_json) if isinstance(s.get('image'), list)]
    assert pairs
    for sample in pairs:
        color = re.search(r'shows an? (\w+) shape', sample['conversations'][0]['value']).group(1)
        present = [any(o['color'] == color for o in annotations[rel]) for rel in sample['image']]
        expected = 'first' if present == [True, False] else 'second'
        assert present in ([True, False], [False, True])
        assert sample['conversations'][1]['value'] == expected


def test_eval_json_is_held_out_with_one_word_answers(assets: TinyAssets) -> None:
    data = _load(assets.eval_json)
    train_images = {s['image'] for s in _load(assets.pretrain_json)}
    eval_images = set()
    for sample in data:
        assert _check_llava_sample(sample, assets.image_folder, '<image>\n') == 1
        assert sample['image'] not in train_images
        eval_images.add(sample['image'])
        assert re.fullmatch(r'[a-z]+', sample['answer'])
        assert sample['conversations'][1]['value'] == sample['answer']
        assert sample['category'] in {'color', 'shape', 'position', 'count'}
    assert len(eval_images) == 100


def _shape_from_fill(fill: float) -> str:
    # fraction of the tight bounding box a shape covers: star ≈ .43, triangle ≈ .52,
    # circle ≈ .77, square = 1
    if fill < 0.47:
        return 'star'
    if fill < 0.65:
        return 'triangle'
    if fill < 0.9:
        return 'circle'
    return 'square'


def test_captions_match_pixels(assets: TinyAssets) -> None:
    """Read each caption back from the pixels: colour, shape and position of every object."""
    for sample in _load(assets.pretrain_json)[:150]:
        image = np.asarray(Image.open(assets.image_folder / sample['image']).convert('RGB'),
                           dtype=np.float64)
        size = image.shape[0]
        # corner cells never hold a shape: their median is the background
        background = np.median(image[:size // 3, :size // 3].reshape(-1, 3), axis=0)
        foreground = np.linalg.norm(image - background, axis=-1) > 60
        named = _CAPTION_RE.findall(sample['conversations'][1]['value'])
        assert 1 <= len(named) <= 2
        covered = np.zeros_like(foreground)
        for color, shape, phrase in named:
            x0, y0, x1, y1 = shapes.cell_box(_PHRASE_TO_POSITION[phrase], size)
            covered[y0:y1, x0:x1] = True
            mask = foreground[y0:y1, x0:x1]
            assert mask.sum() >= 20, sample['id']
            mean = image[y0:y1, x0:x1][mask].mean(axis=0)
            nearest = min(shapes.COLORS, key=lambda c: np.linalg.norm(mean - shapes.COLORS[c]))
            assert nearest == color, (sample['id'], mean)
            ys, xs = np.nonzero(mask)
            fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
            assert _shape_from_fill(fill) == shape, (sample['id'], fill)
        assert not (foreground & ~covered).any(), sample['id']  # nothing outside named cells


def test_generate_shapes_is_deterministic_and_sized(tmp_path: Path) -> None:
    a = shapes.generate_shapes(tmp_path / 'a', num_train=20, num_eval=5, image_size=48, seed=3)
    b = shapes.generate_shapes(tmp_path / 'b', num_train=20, num_eval=5, image_size=48, seed=3)
    assert _files(a.root) == _files(b.root)
    c = shapes.generate_shapes(tmp_path / 'c', num_train=20, num_eval=5, image_size=48, seed=4)
    assert _files(c.root) != _files(a.root)
    assert Image.open(a.image_folder / 'images' / 'train_000000.png').size == (48, 48)
    assert len(list((a.root / 'images').glob('*.png'))) == 25


def test_generate_shapes_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='too small'):
        shapes.generate_shapes(tmp_path, image_size=8)
    with pytest.raises(ValueError, match='num_train'):
        shapes.generate_shapes(tmp_path, num_train=1)


# ----------------------------------------------------------------------------------------------
# Tiny Qwen2-VL (own stamp)
# ----------------------------------------------------------------------------------------------
def test_tiny_qwen2_vl_loads_with_hf_and_is_reused(assets: TinyAssets) -> None:
    from transformers import Qwen2VLForConditionalGeneration

    from mllm_align.testing.tiny_assets import build_tiny_qwen2_vl
    from mllm_align.testing.tiny_tokenizer import QWEN2_VL_CHAT_TEMPLATE, QWEN2_VL_SPECIAL_TOKENS

    path = build_tiny_qwen2_vl(assets.root)
    assert path == assets.qwen2_vl
    stamp = (path / tiny_assets.STAMP_NAME).read_bytes()
    main_stamp = (assets.root / tiny_assets.STAMP_NAME).read_bytes()
    assert build_tiny_qwen2_vl(assets.root) == path  # reused: neither stamp rewritten
    assert (path / tiny_assets.STAMP_NAME).read_bytes() == stamp
    assert (assets.root / tiny_assets.STAMP_NAME).read_bytes() == main_stamp
    model = Qwen2VLForConditionalGeneration.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = AutoImageProcessor.from_pretrained(path, use_fast=False)
    config = model.config
    assert tokenizer.chat_template == QWEN2_VL_CHAT_TEMPLATE
    for token in QWEN2_VL_SPECIAL_TOKENS:
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]
    assert config.image_token_id == tokenizer.convert_tokens_to_ids('<|image_pad|>')
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids('<|vision_start|>')
    assert config.text_config.vocab_size == len(tokenizer) and config.text_config.hidden_size == 64
    assert config.text_config.num_hidden_layers == 2 and config.vision_config.depth == 2
    assert sum(config.text_config.rope_scaling['mrope_section']) * 2 == 64 // 4  # head_dim / 2 frequencies
    assert (processor.patch_size, processor.merge_size) == (config.vision_config.patch_size,
                                                            config.vision_config.spatial_merge_size)
    shape = Image.open(next((assets.shapes_root / shapes.IMAGE_DIR).glob('*.png')))
    out = processor(images=[shape], return_tensors='pt')
    assert out['image_grid_thw'].tolist() == [[1, 8, 8]]  # 64² shape image → 32² → 16 tokens after the merge
    text = tokenizer.apply_chat_template([{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text',
                                                                                          'text': 'Colour?'}]}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text.replace('<|image_pad|>', '<|image_pad|>' * 16), return_tensors='pt').input_ids
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=out['pixel_values'], image_grid_thw=out['image_grid_thw']).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()
    assert GenerationConfig.from_pretrained(path).eos_token_id == tokenizer.convert_tokens_to_ids(
        ['<|im_end|>', '<|endoftext|>'])
    rows = {row['name']: row for row in summarize_tiny_assets(assets)}
    assert rows['qwen2_vl']['detail'].startswith('Qwen2VLForConditionalGeneration')
