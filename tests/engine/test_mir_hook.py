"""MIRHook: logs ``mir`` through the visualizer, early-stops, observes only, agrees across ranks."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub, MMLogger
from mmengine.runner import Runner
from mmengine.visualization import LocalVisBackend, Visualizer
from PIL import Image

from mllm_align.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mllm_align.data import llava_collate_fn, process_images
from mllm_align.engine.hooks import mir_hook as mir_hook_module
from mllm_align.engine.hooks.mir_hook import MIRHook
from mllm_align.models import LLaVAModel, VisionTower, load_image_processor, load_llm, load_tokenizer

TEXTS = ['The ferry left late because of fog.', 'The council argued about the budget.',
         'Bread needs flour, water and salt.', 'Volunteers counted trout in the river.']


def _model(assets):
    torch.manual_seed(0)
    return LLaVAModel(llm=dict(type=load_llm, path=str(assets.llm('llama'))),
                      visual_encoder=dict(type=VisionTower, path=str(assets.vision('clip'))),
                      tokenizer=dict(type=load_tokenizer, path=str(assets.llm('llama'))), template='plain')


@pytest.fixture(scope='module')
def probe_dirs(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp('hook_probe')
    (root / 'images').mkdir()
    (root / 'texts').mkdir()
    for src in sorted((tiny_assets.image_folder / 'images').glob('train_*.png'))[:4]:
        shutil.copy(src, root / 'images' / src.name)
    for i, text in enumerate(TEXTS):
        (root / 'texts' / f'{i}.txt').write_text(text)
    return root


@pytest.fixture(scope='module')
def processor(tiny_assets):
    return load_image_processor(str(tiny_assets.vision('clip')))


def _hook(probe_dirs, processor, **kwargs):
    return MIRHook(images=str(probe_dirs / 'images'), texts=str(probe_dirs / 'texts'), eval_num=3,
                   text_max_tokens=16, image_processor=processor, **kwargs)


class _Recorder:
    def __init__(self):
        self.calls = []

    def add_scalars(self, scalars, step=0, **kwargs):
        self.calls.append((step, dict(scalars)))


def _fake_runner(model, name):
    return SimpleNamespace(model=model, iter=0, cfg=None, visualizer=_Recorder(),
                           message_hub=MessageHub.get_instance(name), logger=MMLogger.get_instance(name),
                           train_loop=SimpleNamespace(stop_training=False))


def test_observes_only_and_logs_scalars(tiny_assets, probe_dirs, processor):
    model = _model(tiny_assets)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    attrs = set(vars(model))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    runner = _fake_runner(model, 'mir_observe')
    hook = _hook(probe_dirs, processor, log_per_layer=True)
    hook.before_train(runner)  # evaluates once (evaluate_before_train)
    runner.iter = 4
    hook.after_train_iter(runner, 4)  # interval 500: no evaluation
    assert len(runner.visualizer.calls) == 1
    step, scalars = runner.visualizer.calls[0]
    assert step == 0 and set(scalars) == {'mir', 'mir/layer_1', 'mir/layer_2'}
    assert runner.message_hub.get_scalar('mir/mir').current() == scalars['mir']
    assert model.training and set(vars(model)) == attrs
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not runner.train_loop.stop_training


def test_defaults_come_from_the_config(tiny_assets, monkeypatch):
    from pathlib import Path

    from mmengine.config import Config
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the tiny config's data paths are relative to the repo
    runner = _fake_runner(_model(tiny_assets), 'mir_defaults')
    runner.cfg = Config.fromfile('projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py')
    hook = MIRHook(eval_num=2, text_max_tokens=16)
    hook.before_train(runner)
    assert hook.probe.sources['images'].endswith('shapes/pretrain.json')
    assert hook.probe.sources['texts'].endswith('mir_texts') and len(runner.visualizer.calls) == 1


def test_resume_continues_early_stopping_state(probe_dirs, processor, tiny_assets):
    runner = _fake_runner(_model(tiny_assets), 'mir_resume')
    runner.message_hub.update_info('mir_hook', dict(best=1.25, num_bad=1))  # as restored from a checkpoint
    hook = _hook(probe_dirs, processor, patience=3)
    hook.before_train(runner)
    assert (hook.best, hook.num_bad) == (1.25, 1) and runner.visualizer.calls == []


def test_patience_and_min_delta(monkeypatch):
    values = iter([3.0, 2.5, 2.6, 2.495, 2.7])
    monkeypatch.setattr(mir_hook_module, 'compute_model_mir',
                        lambda *a, **k: SimpleNamespace(mir=next(values), per_layer=[1.0]))
    hook = MIRHook(interval=1, patience=2, min_delta=0.01)
    hook.probe, hook.layer_ids = object(), [1]  # skip building a probe
    runner = _fake_runner(torch.nn.Linear(1, 1), 'mir_patience')
    stops = []
    for step in range(5):
        hook._evaluate(runner, step)
        stops.append(runner.train_loop.stop_training)
    # 3.0 best → 2.5 best → 2.6 bad → 2.495 bad (not 0.01 below 2.5) → stop
    assert stops == [False, False, False, True, True]
    assert hook.best == 2.5 and [s for s, _ in hook.history] == [0, 1, 2, 3, 4]


def test_rank0_result_is_broadcast(monkeypatch):
    def no_compute(*args, **kwargs):
        raise AssertionError("compute_on='rank0': rank 1 must not compute")

    def fake_broadcast(box, src=0):
        box[0] = dict(mir=1.5, per_layer=[1.0, 2.0])  # what rank 0 computed

    monkeypatch.setattr(mir_hook_module, 'compute_model_mir', no_compute)
    monkeypatch.setattr(mir_hook_module, 'get_dist_info', lambda: (1, 2))
    monkeypatch.setattr(mir_hook_module, 'broadcast_object_list', fake_broadcast)
    hook = MIRHook(compute_on='rank0', patience=1)
    hook.probe, hook.layer_ids = object(), [1, 2]
    runner = _fake_runner(torch.nn.Linear(1, 1), 'mir_rank1')
    hook._evaluate(runner, 0)
    hook._evaluate(runner, 1)  # same value: no improvement → the same stop decision as rank 0
    assert [m for _, m in hook.history] == [1.5, 1.5] and runner.train_loop.stop_training


def test_bad_arguments():
    with pytest.raises(ValueError, match='interval must be a positive int'):
        MIRHook(interval=0)
    with pytest.raises(ValueError, match='sqrt='):
        MIRHook(sqrt='fast')
    with pytest.raises(ValueError, match='patience must be None or a positive int'):
        MIRHook(patience=0)


def _items(assets, processor, n=8):
    tokenizer = load_tokenizer(str(assets.llm('llama')))
    records = json.loads(assets.pretrain_json.read_text())[:n]
    items = []
    for rec in records:
        caption = tokenizer(rec['conversations'][1]['value'], add_special_tokens=False).input_ids
        ids = [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX] + caption + [tokenizer.eos_token_id]
        with Image.open(assets.image_folder / rec['image']) as img:
            pixels = process_images([img], processor)
        items.append(dict(input_ids=ids, labels=[IGNORE_INDEX, IGNORE_INDEX] + ids[2:], pixel_values=pixels))
    return items


def test_runner_logs_mir_and_stops_early(tiny_assets, probe_dirs, processor, tmp_path):
    hook = _hook(probe_dirs, processor, interval=1, patience=2, min_delta=1e9, log_per_layer=True)
    runner = Runner(
        model=_model(tiny_assets), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=_items(tiny_assets, processor), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type=llava_collate_fn)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=10), default_hooks=dict(checkpoint=None),
        custom_hooks=[hook], visualizer=dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend)]))
    runner.train()
    # min_delta=1e9: nothing counts as improvement; the before-train value sets the best, so the
    # evaluations after iterations 1 and 2 exhaust patience=2 and training stops after iteration 2
    assert runner.iter == 2 and runner.train_loop.stop_training
    scalar_files = list(tmp_path.glob('*/vis_data/scalars.json'))
    assert len(scalar_files) == 1
    logged = [json.loads(line) for line in scalar_files[0].read_text().splitlines() if '"mir"' in line]
    assert [r['step'] for r in logged] == [0, 1, 2]
    assert all('mir/layer_1' in r and 'mir/layer_2' in r for r in logged)
    # training moved the projector, so MIR moved too
    assert len({r['mir'] for r in logged}) > 1
