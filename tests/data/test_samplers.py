"""LengthGroupedSampler: determinism, rank shards, modality grouping, mmengine building."""
from __future__ import annotations

import json

import numpy as np
import pytest
from mmengine.registry import DATA_SAMPLERS

import mllm_align.data.samplers as samplers
from mllm_align.data import LengthGroupedSampler, length_grouped_indices


class FakeDataset:
    def __init__(self, modality_lengths):
        self.modality_lengths = np.asarray(modality_lengths)

    def __len__(self):
        return len(self.modality_lengths)


def mixed(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 2000, n)
    return np.where(rng.random(n) < 0.7, lengths, -lengths)


def sampler_for(ds, rank=0, world=1, monkeypatch=None, **kwargs):
    monkeypatch.setattr(samplers, 'get_dist_info', lambda: (rank, world))
    return LengthGroupedSampler(ds, **kwargs)


def test_deterministic_for_seed_and_epoch(monkeypatch):
    ds = FakeDataset(mixed())
    a = sampler_for(ds, monkeypatch=monkeypatch, per_device_batch_size=4, seed=3)
    b = sampler_for(ds, monkeypatch=monkeypatch, per_device_batch_size=4, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert sorted(first) == list(range(len(ds)))  # a permutation in one process
    c = sampler_for(ds, monkeypatch=monkeypatch, per_device_batch_size=4, seed=4)
    assert list(c) != first


@pytest.mark.parametrize('n,world,round_up', [(1000, 4, True), (1003, 4, True), (1003, 4, False), (7, 8, True)])
def test_rank_shards_are_disjoint_and_cover(monkeypatch, n, world, round_up):
    ds = FakeDataset(mixed(n))
    shards = [list(sampler_for(ds, rank=r, world=world, monkeypatch=monkeypatch,
                               per_device_batch_size=2, seed=0, round_up=round_up))
              for r in range(world)]
    lens = [len(sampler_for(ds, rank=r, world=world, monkeypatch=monkeypatch,
                            per_device_batch_size=2, seed=0, round_up=round_up)) for r in range(world)]
    assert [len(s) for s in shards] == lens
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(n))
    if round_up:
        assert len(set(lens)) == 1 and len(flat) == -(-n // world) * world
    else:
        assert len(flat) == n and len(set(flat)) == n  # disjoint
    if n % world == 0:
        assert len(set(flat)) == len(flat)  # disjoint when no padding is needed


def test_batches_keep_modalities_apart_and_group_lengths(monkeypatch):
    lengths = mixed(4000, seed=1)
    ds = FakeDataset(lengths)
    world, bs = 4, 8
    shards = [list(sampler_for(ds, rank=r, world=world, monkeypatch=monkeypatch,
                               per_device_batch_size=bs, seed=0)) for r in range(world)]
    n_batches = len(shards[0]) // bs
    mixed_batches = 0
    spreads = []
    for r in range(world):
        for k in range(n_batches):
            batch = lengths[shards[r][k * bs:(k + 1) * bs]]
            mixed_batches += not ((batch > 0).all() or (batch < 0).all())
            spreads.append(np.abs(batch).max() - np.abs(batch).min())
    # only the final remainder batch(es) may mix modalities
    assert mixed_batches <= 2 * world
    # grouped by length: batches are far tighter than random batches (lengths span 1..2000)
    assert np.median(spreads) < 200
    # the step that runs first holds the longest sample
    first_global = [shards[r][k] for r in range(world) for k in range(bs)]
    assert np.abs(lengths).max() == np.abs(lengths[first_global]).max()
    # one global step: all ranks see the same modality
    for k in range(n_batches - 2):
        step = np.concatenate([lengths[shards[r][k * bs:(k + 1) * bs]] for r in range(world)])
        assert (step > 0).all() or (step < 0).all()


def test_single_modality_and_lengths_attribute(monkeypatch):
    class OnlyLengths:
        lengths = np.arange(1, 101)

        def __len__(self):
            return 100

    s = sampler_for(OnlyLengths(), monkeypatch=monkeypatch, per_device_batch_size=5, seed=0)
    order = list(s)
    assert sorted(order) == list(range(100))
    assert order[0] == 99 or 99 in order[:5]  # longest batch first


def test_length_grouped_indices_is_a_permutation():
    rng = np.random.default_rng(0)
    for n in (1, 5, 17, 100):
        order = length_grouped_indices(mixed(n), 4, 8, rng)
        assert sorted(order.tolist()) == list(range(n))


def test_errors(monkeypatch):
    with pytest.raises(TypeError, match='no `modality_lengths`'):
        sampler_for([1, 2, 3], monkeypatch=monkeypatch, per_device_batch_size=1)
    with pytest.raises(ValueError, match='zeros'):
        sampler_for(FakeDataset([1, 0, -2]), monkeypatch=monkeypatch, per_device_batch_size=1)
    with pytest.raises(ValueError, match='per_device_batch_size'):
        sampler_for(FakeDataset([1]), monkeypatch=monkeypatch, per_device_batch_size=0)


def test_built_by_mmengine_registry_and_runner(tmp_path):
    """mmengine builds samplers with default_args dataset= and seed= (seed may be None)."""
    ds = FakeDataset(mixed(50))
    s = DATA_SAMPLERS.build(dict(type=LengthGroupedSampler, per_device_batch_size=4),
                            default_args=dict(dataset=ds, seed=None))
    assert isinstance(s, LengthGroupedSampler) and isinstance(s.seed, int)
    s2 = DATA_SAMPLERS.build(dict(type='LengthGroupedSampler', per_device_batch_size=4),
                             default_args=dict(dataset=ds, seed=7))
    assert s2.seed == 7

    from mmengine.runner import Runner
    from PIL import Image
    from transformers import CLIPImageProcessor

    from mllm_align.data import LLaVADataset, llava_collate_fn
    from mllm_align.testing.tiny_tokenizer import SAMPLE_CORPUS, build_tiny_tokenizer
    Image.new('RGB', (8, 8)).save(tmp_path / 'a.png')
    items = [{'id': str(i), 'image': 'a.png',
              'conversations': [{'from': 'human', 'value': '<image>\nq' + ' x' * i}, {'from': 'gpt', 'value': 'a'}]}
             for i in range(6)] + [{'id': 't', 'conversations': [{'from': 'human', 'value': 'q'},
                                                                {'from': 'gpt', 'value': 'a'}]}]
    (tmp_path / 'd.json').write_text(json.dumps(items))
    tok = build_tiny_tokenizer('llama3', list(SAMPLE_CORPUS), vocab_size=512)
    loader = Runner.build_dataloader(dict(
        batch_size=2, num_workers=0,
        dataset=dict(type=LLaVADataset, data_path=str(tmp_path / 'd.json'), image_folder=str(tmp_path),
                     tokenizer=tok, template='llama3', num_image_tokens=4,
                     image_processor=dict(type=CLIPImageProcessor, size={'shortest_edge': 16},
                                          crop_size={'height': 16, 'width': 16})),
        sampler=dict(type=LengthGroupedSampler, per_device_batch_size=2),
        collate_fn=dict(type=llava_collate_fn, pad_token_id=tok.pad_token_id)), seed=0)
    batches = list(loader)
    assert len(batches) == 4
    assert sum(b['data']['input_ids'].shape[0] for b in batches) == 7
    assert batches[0]['data']['pixel_values'].shape[1:] == (3, 16, 16)
