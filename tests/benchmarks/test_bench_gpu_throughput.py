"""``benchmarks/bench_gpu_throughput.py`` on its CPU smoke shape: the output is well-formed, the ratios come from
the same run and the FLOPs count matches a hand count. Correctness only: no speed is asserted."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / 'benchmarks' / 'bench_gpu_throughput.py'
PEAK_TFLOPS = 0.5  # any value: MFU is checked against the formula, never against a speed
STEPS = 2


def load_bench():
    spec = importlib.util.spec_from_file_location('bench_gpu_throughput', BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def bench():
    return load_bench()


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """The documented command on the tiny shape, as a user runs it (fewer steps)."""
    out = tmp_path_factory.mktemp('gpu_throughput') / 'out.json'
    cmd = [sys.executable, str(BENCH), '--device', 'cpu', '--shape', 'tiny', '--warmup', '1', '--steps', str(STEPS),
           '--peak-tflops', str(PEAK_TFLOPS), '--json', str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_configuration_is_measured_with_finite_positive_figures(bench, tiny_run):
    data, stdout = tiny_run
    results = data['results']
    assert [(r['stage'], r['config']) for r in results] == [(s, m) for s in bench.STAGES for m in bench.METHODS]
    for r in results:
        where = f"{r['stage']}/{r['config']}"
        assert r['status'] == 'ok', where
        for key in ('samples_per_s', 'tokens_per_s', 'step_s', 'mfu', 'model_flops_per_step', 'loss'):
            assert math.isfinite(r[key]) and r[key] > 0, (where, key, r[key])
        assert len(r['step_times']) == STEPS and all(t > 0 for t in r['step_times'])
        assert r['step_s'] == pytest.approx(sum(r['step_times']) / STEPS)
        assert r['samples_per_s'] == pytest.approx(r['batch'] / r['step_s'])
        assert r['tokens_per_s'] == pytest.approx(r['batch'] * r['seq_len'] / r['step_s'])
        assert r['peak_mem_bytes'] is None  # not measured on CPU
        assert r['trainable_params'] > 0
    meta = data['meta']
    assert meta['device'].startswith('CPU') and meta['shape']['name'] == 'tiny'
    assert meta['attn_implementation'] == 'sdpa'
    assert 'AdamW' in meta['optimizer'] and 'lr 0' in meta['optimizer']
    for stage in bench.STAGES:  # one printed table per stage, a row per configuration
        table = stdout.split(f'\n{stage}: ', 1)[1]
        for method in bench.METHODS:
            assert f'\n| {method} | ' in table, (stage, method)
    # the plug-ins were attached: their parameters train (MoCa's u, v; the visual-word head), CAL has none
    by = {(r['stage'], r['config']): r for r in results}
    for stage in bench.STAGES:
        base = by[stage, 'baseline']['trainable_params']
        assert by[stage, 'moca']['trainable_params'] == base + 2 * bench.TINY.layers * bench.TINY.hidden
        assert by[stage, 'cal']['trainable_params'] == base
        assert by[stage, 'visual_words']['trainable_params'] == base + bench.TINY.vocab * bench.TINY.hidden


def test_ratios_and_mfu_come_from_the_same_run(bench, tiny_run):
    data, _ = tiny_run
    base = {r['stage']: r for r in data['results'] if r['config'] == 'baseline'}
    for r in data['results']:
        ref = base[r['stage']]
        assert r['model_flops_per_step'] == ref['flops']['total']  # the baseline's FLOPs for every configuration
        assert r['mfu'] == pytest.approx(ref['flops']['total'] / r['step_s'] / (PEAK_TFLOPS * 1e12))
        ratios = r['vs_baseline']
        for key in ('samples_per_s', 'tokens_per_s', 'mfu', 'step_s'):
            assert ratios[key] == pytest.approx(r[key] / ref[key]), (r['stage'], r['config'], key)
        assert ratios['peak_mem_bytes'] is None
        if r['config'] == 'baseline':
            assert ratios['samples_per_s'] == 1.0


def test_flops_match_a_hand_count(bench):
    """Tiny shape: L = 2, D = 64, F = 128, 4 heads / 2 KV heads (D_kv = 32), V = 320; CLIP 2 layers (1 used, select
    -2), C = 32, F_v = 64, 56 px / patch 14 → P = 16, S_v = 17; S = 64, B = 2."""
    tiny = bench.TINY
    # LLM matmul weights: 2 · (2·64·64 + 2·64·32 + 3·64·128) = 2 · (8192 + 4096 + 24576) = 73,728
    # pre-training: K = 2 · (64 − 1 − 16) = 94 caption tokens, all supervised
    pretrain, sft = bench.make_batch(tiny, 'pretrain', 2), bench.make_batch(tiny, 'sft', 2)
    assert bench.head_rows(pretrain) == 94
    # SFT: text = 64 − 1 − 4 − 16 = 43 tokens in spans of 3 (question) + 7 (answer): 4 answers of 7 → 28 per sample
    assert bench.head_rows(sft) == 56
    vision = 2 * (2 * 1 * (4 * 32 * 32 + 2 * 32 * 64) * 17 + 4 * 1 * 32 * 17 * 17 + 2 * 3 * 14 * 14 * 32 * 16)
    assert vision == 1_835_264
    common = dict(attention=12 * 2 * 64 * 64 * 64 * 2,  # 12,582,912
                  projector=(4 * 32 * 64 + 6 * 64 * 64) * 2 * 16,  # 1,048,576
                  vision=vision)
    assert bench.step_flops(tiny, 'pretrain', 2, 94) == dict(
        llm=4 * 73_728 * 128, lm_head=4 * 320 * 64 * 94, **common, total=60_915_968)
    assert bench.step_flops(tiny, 'sft', 2, 56) == dict(
        llm=6 * 73_728 * 128, lm_head=6 * 320 * 64 * 56, **common, total=78_971_136)


def test_llava7b_shape_builds_on_the_meta_device(bench):
    """The shape the GPU run builds, without memory: LLaMA-2-7B / Vicuna-7B and CLIP ViT-L/14-336 parameter counts,
    and the LLM matmul weights of the FLOPs formula."""
    llm, clip = bench.build_parts(bench.LLAVA7B, torch.device('meta'), torch.bfloat16, 'sdpa')
    assert sum(p.numel() for p in llm.parameters()) == 6_738_415_616
    assert sum(p.numel() for p in clip.parameters()) == 303_507_456
    layers = llm.model.layers
    matmul = sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))
    assert matmul == 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008)  # 6,476,005,376: the formula's N
    flops = bench.step_flops(bench.LLAVA7B, 'sft', 1, 1)
    assert flops['llm'] == 6 * matmul * 2048
    assert bench.LLAVA7B.image_tokens == 576


def test_time_limit_skips_and_says_so(bench, tmp_path, capsys):
    out = tmp_path / 'out.json'
    threads = torch.get_num_threads()
    bench.main(['--device', 'cpu', '--shape', 'tiny', '--time-limit', '0', '--threads', str(threads),
                '--json', str(out)])
    assert torch.get_num_threads() == threads
    results = json.loads(out.read_text())['results']
    assert len(results) == len(bench.STAGES) * len(bench.METHODS)
    assert all(r['status'] == 'skipped' and r['reason'].startswith('time limit') for r in results)
    assert 'Not measured: pretrain/baseline (time limit' in capsys.readouterr().out


@pytest.mark.parametrize('name, tflops', [('NVIDIA H200', 989.4), ('NVIDIA H100 80GB HBM3', 989.4),
                                          ('NVIDIA H100 PCIe', 756.0), ('NVIDIA H100 NVL', 835.0),
                                          ('NVIDIA A100-SXM4-80GB', 312.0), ('Tesla T4', None)])
def test_peak_flops_by_device_name(bench, monkeypatch, name, tflops):
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: name)
    assert bench.peak_tflops(torch.device('cuda'), None)[0] == tflops
    assert bench.peak_tflops(torch.device('cuda'), 123.0) == (123.0, '--peak-tflops')
    assert bench.peak_tflops(torch.device('cpu'), None)[0] is None
