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


def _train_tool():
    """tools/train.py as a module (its functions, without running main)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('train_tool', REPO / 'tools' / 'train.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extra_hooks_are_appended_after_cfg_options(tiny_assets):
    crash = dict(type='SimulatedCrashHook', at_iter=3, target='launcher')
    base = [h['type'] for h in prepare_config(TINY).custom_hooks]
    hooks = prepare_config(TINY, extra_hooks=[crash]).custom_hooks
    assert [h['type'] for h in hooks] == base + ['SimulatedCrashHook'] and hooks[-1] == crash
    assert prepare_config(TINY, cfg_options={'custom_hooks': []}, extra_hooks=[crash]).custom_hooks == [crash]


def test_train_tool_turns_the_fault_environment_into_config_hooks(monkeypatch, tiny_assets):
    from mmengine.registry import HOOKS
    train = _train_tool()
    for name in ('MLLM_ALIGN_CRASH_AT_ITER', 'MLLM_ALIGN_CRASH_RANK', 'MLLM_ALIGN_CKPT_FAULT', 'MLLM_ALIGN_FAULT_RANK'):
        monkeypatch.delenv(name, raising=False)
    assert train.fault_hooks() == []
    monkeypatch.setenv('MLLM_ALIGN_CRASH_AT_ITER', '3')
    monkeypatch.setenv('MLLM_ALIGN_CRASH_RANK', 'launcher')
    monkeypatch.setenv('MLLM_ALIGN_CKPT_FAULT', 'enospc:iter_4.pth')
    monkeypatch.setenv('MLLM_ALIGN_FAULT_RANK', '0')
    hooks = prepare_config(TINY, extra_hooks=train.fault_hooks()).custom_hooks
    assert hooks[-2:] == [dict(type='SimulatedCrashHook', at_iter=3, target='launcher'),
                          dict(type='CheckpointWriteFaultHook', action='enospc', pattern='iter_4.pth', fault_dir=None,
                               rank=0)]
    crash, fault = (HOOKS.build(dict(h)) for h in hooks[-2:])  # the registry names resolve
    assert (crash.at_iter, crash.target) == (3, 'launcher')
    assert (fault.fault.action, fault.fault.pattern, fault.fault.rank) == ('enospc', 'iter_4.pth', 0)


@pytest.fixture(scope='module')
def normal_run(tiny_assets, tmp_path_factory):
    """tools/train.py's path to a built Runner, without fault variables or --deepspeed, in a fresh process.

    Returns its printed lines by tag: HOOKS (the runner's hooks), TESTING and DEEPSPEED (the imported
    ``mllm_align.testing`` / ``deepspeed`` modules), MMENGINE_DS (mmengine's strategy module's ``deepspeed``
    global), FIND_SPEC (whether ``importlib.util.find_spec('deepspeed')`` still finds the package, as
    transformers checks), FINDERS (deferring finders left on ``sys.meta_path``), BOUND (mmengine's global
    once ``mllm_align.engine.ds_strategy`` is imported, as a DeepSpeed run does).
    """
    import os
    import subprocess
    import sys
    work = tmp_path_factory.mktemp('normal_run') / 'work'
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location('train_tool', {str(REPO / 'tools' / 'train.py')!r})
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
cfg = train.prepare_config({TINY!r}, work_dir={str(work)!r}, extra_hooks=train.fault_hooks())
runner = train.build_runner(cfg)
print('HOOKS', sorted(type(h).__name__ for h in runner.hooks))
print('TESTING', sorted(m for m in sys.modules if m.startswith('mllm_align.testing')))
print('DEEPSPEED', sorted(m for m in sys.modules if m == 'deepspeed' or m.startswith('deepspeed.')))
print('MMENGINE_DS', sys.modules['mmengine._strategy.deepspeed'].deepspeed)
print('FIND_SPEC', importlib.util.find_spec('deepspeed') is not None)
print('FINDERS', [type(f).__name__ for f in sys.meta_path if 'Defer' in type(f).__name__])
import mllm_align.engine.ds_strategy
print('BOUND', getattr(sys.modules['mmengine._strategy.deepspeed'].deepspeed, '__name__', None))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MLLM_ALIGN_CRASH', 'MLLM_ALIGN_CKPT_FAULT'))}
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(env, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(line.split(' ', 1) for line in proc.stdout.splitlines()
                if line.startswith(('HOOKS', 'TESTING', 'DEEPSPEED', 'MMENGINE_DS', 'FIND_SPEC', 'FINDERS', 'BOUND')))


def test_a_normal_run_imports_no_test_code(normal_run):
    """tools/train.py's path to a built Runner without fault variables never imports mllm_align.testing."""
    assert 'CheckpointHook' in normal_run['HOOKS'] and 'SimulatedCrashHook' not in normal_run['HOOKS']
    assert normal_run['TESTING'] == '[]', f'a normal run imported {normal_run["TESTING"]}'


def test_a_normal_run_imports_no_deepspeed(normal_run):
    """Without --deepspeed no deepspeed module is imported (mllm_align/lazy_imports.py); DeepSpeed stays findable
    for transformers, the deferral removed itself, and importing ds_strategy gives mmengine its deepspeed back."""
    import importlib.util
    assert normal_run['DEEPSPEED'] == '[]', f'a run without --deepspeed imported {normal_run["DEEPSPEED"]}'
    assert normal_run['MMENGINE_DS'] == 'None'
    assert normal_run['FINDERS'] == '[]'
    if importlib.util.find_spec('deepspeed') is not None:  # installed: pinned in requirements-dev.txt
        assert normal_run['FIND_SPEC'] == 'True'
        assert normal_run['BOUND'] == 'deepspeed'


@pytest.mark.parametrize('argv, asks', [
    ([], False), (['cfg.py', '--launcher', 'pytorch'], False), (['cfg.py', '--deepspeed', 'deepspeed_zero2'], True),
    (['cfg.py', '--deepspeed=deepspeed_zero3'], True), (['cfg.py', '--deeps', 'deepspeed_zero3'], True),
    (['cfg.py', '--', '--deepspeed'], False), (['cfg.py', '--d'], True), (['cfg.py', '--', 'x'], False)])
def test_deepspeed_is_seen_on_the_command_line_as_argparse_sees_it(argv, asks):
    from mllm_align.lazy_imports import argv_asks_for_deepspeed
    assert argv_asks_for_deepspeed(argv) is asks
