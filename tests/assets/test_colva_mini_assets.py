"""The CoLVA mini sets built from real photos: SA-1B layout (sa1b_mini) and MMVMData layout (mmvm_sft_mini) —
loadable by their datasets, seed-deterministic, the SFT answers right by construction."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mllm_align.constants import IGNORE_INDEX, VPT_TOKEN

pytestmark = pytest.mark.real_assets
TINY = Path(__file__).resolve().parents[2] / 'data' / 'tiny'


@pytest.fixture(scope='module')
def members():
    from mllm_align.assets.correspondence import read_skimage_members
    from mllm_align.assets.mmvm_mini import SKIMAGE_MEMBERS
    from mllm_align.assets.sa1b_mini import STARDIST_MEMBERS
    from mllm_align.assets.wheels import read_member
    from mllm_align.testing.real_assets import real_wheel, require_demo_extra
    require_demo_extra('tifffile')
    out = read_skimage_members(real_wheel('scikit-image'), SKIMAGE_MEMBERS)
    stardist = real_wheel('stardist')
    out.update({m: read_member(stardist, m) for m in STARDIST_MEMBERS})
    return out


@pytest.fixture(scope='module')
def sets(members, tmp_path_factory):
    from mllm_align.assets.mmvm_sft_mini import build_mmvm_sft_mini
    from mllm_align.assets.sa1b_mini import build_sa1b_mini
    root = tmp_path_factory.mktemp('colva')
    return (root / 'sa1b', build_sa1b_mini(members, root / 'sa1b', seed=0),
            root / 'sft', build_mmvm_sft_mini(members, root / 'sft', seed=0))


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


class IdentityProcessor:
    image_mean = (0.5, 0.5, 0.5)
    model_input_names = ['pixel_values']

    def __call__(self, images, return_tensors='np'):
        return {'pixel_values': np.stack([np.asarray(im, np.float32).transpose(2, 0, 1) / 255 for im in images])}


def test_builds_are_byte_identical_for_a_seed(members, sets, tmp_path):
    from mllm_align.assets.mmvm_sft_mini import build_mmvm_sft_mini
    from mllm_align.assets.sa1b_mini import build_sa1b_mini
    sa_root, _, sft_root, _ = sets
    build_sa1b_mini(members, tmp_path / 'sa', seed=0)
    build_mmvm_sft_mini(members, tmp_path / 'sft', seed=0)
    assert _digest(tmp_path / 'sa') == _digest(sa_root) and _digest(tmp_path / 'sft') == _digest(sft_root)
    build_mmvm_sft_mini(members, tmp_path / 'other', seed=1)
    assert _digest(tmp_path / 'other') != _digest(sft_root)
    with pytest.raises(KeyError, match='missing source files'):
        build_sa1b_mini({}, tmp_path / 'x')


def test_sa1b_mini_layout_and_dataset(sets):
    from mllm_align.data.sa1b import SA1BPseudoVideoDataset
    from mllm_align.data.visual_prompts import decode_mask
    sa_root, manifest, _, _ = sets
    assert 12 <= manifest['images'] <= 20 and manifest['per_image']['sa_2.jpg']['objects'] == 125  # stardist nuclei
    import json
    doc = json.loads((sa_root / 'sa_3.json').read_text())
    assert set(doc['image']) == {'image_id', 'width', 'height', 'file_name'}
    ann = doc['annotations'][0]
    assert {'id', 'segmentation', 'area', 'bbox'} <= set(ann) and isinstance(ann['segmentation']['counts'], str)
    m = decode_mask(ann['segmentation'], doc['image']['height'], doc['image']['width'])
    assert int(m.sum()) == ann['area']
    ds = SA1BPseudoVideoDataset(sa_root, IdentityProcessor(), expert_image_size=128, expert_grid=16,
                                index_file=sa_root / 'index.json', max_objects=32)
    assert len(ds) == manifest['images']
    dropped = 0
    for i in (0, 1, 2, 5):
        item = ds[i]
        K = len(item['instance_ids'])
        assert 2 <= K <= 32 and item['expert_masks'][0].shape == (K, 128, 128)
        dropped += item['notices']['objects_dropped_small']
    assert dropped >= 1  # the speck coins (and nuclei) too small after augmentation


def test_mmvm_sft_mini_answers_right_by_construction(sets):
    from mllm_align.data.image_loading import load_image
    from mllm_align.data.mmvm_sft import MMVMSFTDataset, load_mmvm_sft, record_masks
    from mllm_align.models.builders import load_tokenizer
    _, _, sft_root, manifest = sets
    assert 40 <= manifest['samples'] <= 80 and manifest['choice_only'] and manifest['reasoning']
    choice = load_mmvm_sft(sft_root / 'mllm_match_choices_sft.json')
    reasoning = load_mmvm_sft(sft_root / 'mllm_match_reasoning_sft.json')
    assert all(r.description is None for r in choice) and all(r.description for r in reasoning)
    absent = 0
    for rec in choice + reasoning:
        images = [np.asarray(load_image(p)) for p in rec.images]
        q, cands = record_masks(rec, [im.shape[1::-1] for im in images])
        q_col = images[0][q].mean(0)
        if rec.answer is None:
            absent += 1
            continue
        t = cands[rec.answer]  # the target: the query coin, barely changed
        assert 0.8 < t.sum() / q.sum() < 1.25
        assert np.abs(images[1][t].mean(0) - q_col).max() < 25
    assert absent == manifest['target_absent']
    tok = load_tokenizer(str(TINY / 'llm' / 'qwen2'), extra_special_tokens=[VPT_TOKEN])
    ds = MMVMSFTDataset([sft_root / 'mllm_match_choices_sft.json', sft_root / 'mllm_match_reasoning_sft.json'], tok,
                        'qwen2', IdentityProcessor(), expert_image_size=256, expert_grid=64, num_image_tokens=4,
                        pad_image_to_square=False)
    vpt = tok.convert_tokens_to_ids(VPT_TOKEN)
    for i in range(0, len(ds), 3):
        item = ds[i]
        rec = ds.record(i)
        assert int((item['input_ids'] == vpt).sum()) == 1 + len(rec.candidates)
        sup = [t for t, lab in zip(item['input_ids'].tolist(), item['labels'].tolist()) if lab != IGNORE_INDEX]
        letter = tok.decode(sup).split('<|im_end|>')[0]
        if rec.answer is None:
            assert letter == chr(65 + len(rec.candidates))
        else:  # the answer's ID indexes the target's expert mask
            tag = ord(letter) - 64
            q, cands = record_masks(rec, [load_image(p).size for p in rec.images])
            from PIL import Image
            target = np.asarray(Image.fromarray(cands[rec.answer].astype(np.uint8) * 255)
                                .resize((256, 256), Image.Resampling.BILINEAR)) > 127
            assert torch.equal(item['expert_masks'][1][tag - 1], torch.from_numpy(target))
