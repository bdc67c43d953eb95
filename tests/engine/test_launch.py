"""Config → runner: loud failures on misspelt keys and missing models, DeepSpeed and CPU-DDP wiring."""
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import MODELS

from mllm_align.engine import launch
from mllm_align.engine.launch import check_config_keys, deepspeed_strategy, prepare_config

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py')


def test_misspelt_runner_key_is_named():
    cfg = Config(dict(model=dict(type='X'), train_dataloder=dict()))
    with pytest.raises(KeyError, match="'train_dataloder' — did you mean 'train_dataloader'"):
        check_config_keys(cfg)


def test_free_part1_names_and_imports_are_accepted():
    check_config_keys(Config(dict(model=dict(), llm_name_or_path='x', max_length=3, lr=1e-3,
                                  LLaVAModel=Config)))


def test_missing_model_section_is_an_error():
    with pytest.raises(KeyError, match='no `model`'):
        check_config_keys(Config(dict(lr=1.0)))


def test_misspelt_model_argument_fails_at_start_naming_it(tiny_assets):
    with pytest.raises(KeyError, match="model.freeze_lm.*did you mean 'freeze_llm'"):  # checked before any build
        prepare_config(TINY, cfg_options={'model.freeze_lm': True})


def test_missing_model_directory_fails_at_build_naming_key_and_path(tiny_assets, tmp_path):
    missing = str(tmp_path / 'vicuna-7b')
    cfg = prepare_config(TINY, cfg_options={'model.llm.path': missing})
    with pytest.raises(FileNotFoundError, match=f"{missing}.*llm_name_or_path"):
        MODELS.build(cfg.model)


def test_work_dir_defaults_to_config_name_and_resume_modes(tmp_path):
    cfg = prepare_config(TINY)
    assert cfg.work_dir == 'work_dirs/llava_v15_7b_pretrain_tiny_cpu'
    assert prepare_config(TINY, work_dir=str(tmp_path), resume='auto').resume is False  # nothing yet: fresh
    with pytest.raises(FileNotFoundError, match='no such checkpoint'):
        prepare_config(TINY, resume=str(tmp_path / 'iter_9.pth'))


def test_deepspeed_needs_the_package(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if n == 'deepspeed' else real(n, *a))
    with pytest.raises(RuntimeError, match=r'pip install -e \.\[gpu\]'):
        prepare_config(TINY, deepspeed='deepspeed_zero2')


def test_deepspeed_config_switches_to_flexible_runner(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: object() if n == 'deepspeed' else real(n, *a))
    cfg = prepare_config(TINY, deepspeed='deepspeed_zero3')
    assert cfg.runner_type == 'FlexibleRunner'
    assert cfg.strategy.type == 'DeepSpeedStrategy'
    assert cfg.strategy.config.zero_optimization.stage == 3
    assert cfg.optim_wrapper.type == 'DeepSpeedOptimWrapper'
    assert cfg.optim_wrapper.optimizer.lr == 1e-3
    ds = cfg.strategy.config  # concrete values (DeepSpeed rejects HF's 'auto'), taken from the config
    assert ds.train_micro_batch_size_per_gpu == Config.fromfile(TINY).train_dataloader.batch_size
    assert ds.gradient_clipping == Config.fromfile(TINY).optim_wrapper.clip_grad.max_norm
    assert not ds.bf16.enabled and not ds.fp16.enabled  # the tiny config's plain OptimWrapper is fp32
    assert deepspeed_strategy('deepspeed_zero2')['config']['zero_optimization']['stage'] == 2
    # AmpOptimWrapper: its dtype picks DeepSpeed's engine
    for dtype, (bf16, fp16) in {None: (True, False), 'bfloat16': (True, False), 'float16': (False, True)}.items():
        opts = {'optim_wrapper.type': 'AmpOptimWrapper'}
        if dtype is not None:
            opts['optim_wrapper.dtype'] = dtype
        amp = prepare_config(TINY, deepspeed='deepspeed_zero2', cfg_options=opts).strategy.config
        assert (amp.bf16.enabled, amp.fp16.enabled) == (bf16, fp16), dtype
    with pytest.raises(ValueError, match="precision='int8'"):
        deepspeed_strategy('deepspeed_zero3', precision='int8')  # type: ignore[arg-type]


def test_mmengine_deepspeed_optimizer_registration_survives_deepspeed_0_19():
    pytest.importorskip('deepspeed')
    from mmengine._strategy import deepspeed as mm_ds
    from mmengine.registry import OPTIMIZERS

    from mllm_align.engine.ds_strategy import patch_optimizer_registration
    patch_optimizer_registration()
    names = mm_ds.register_deepspeed_optimizers()  # mmengine's own raised ModuleNotFoundError (onebit)
    assert {'DeepSpeedCPUAdam', 'FusedAdam'} <= set(names)
    assert OPTIMIZERS.get('DeepSpeedCPUAdam') is not None
    assert set(mm_ds.register_deepspeed_optimizers()) == set(names)  # idempotent


def test_cpu_distributed_uses_gloo_and_no_device_ids(monkeypatch):
    calls = []
    monkeypatch.setattr(launch.dist, 'is_initialized', lambda: False)
    monkeypatch.setattr(launch.dist, 'init_process_group', lambda backend: calls.append(backend))
    monkeypatch.setattr(launch.torch.cuda, 'is_available', lambda: False)
    cfg = prepare_config(TINY, launcher='pytorch')
    assert calls == ['gloo']
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.device_ids is None


def test_crash_hook_is_added_from_the_environment(monkeypatch):
    monkeypatch.setenv('MLLM_ALIGN_CRASH_AT_ITER', '3')
    monkeypatch.setenv('MLLM_ALIGN_CRASH_RANK', 'launcher')
    hooks = prepare_config(TINY).custom_hooks
    assert hooks[-1] == dict(type='SimulatedCrashHook', at_iter=3, target='launcher')
    monkeypatch.delenv('MLLM_ALIGN_CRASH_AT_ITER')
    assert all(h.get('type') != 'SimulatedCrashHook' for h in prepare_config(TINY).custom_hooks)

