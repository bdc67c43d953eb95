"""Turning a config plus command-line choices into a ready mmengine Runner.

``tools/train.py`` is a thin wrapper over :func:`prepare_config` and :func:`build_runner`; tests
call them directly. What happens here:

* no setting is silently ignored: unknown top-level keys that look like misspelt runner keys,
  component arguments the class does not take (``default_hooks.checkpoint.intervall``) and
  settings that must agree (template, tokenizer, image-token count) fail at start
  (:mod:`.config_checks`); a ``--cfg-options`` PART 1 variable re-evaluates the config
  (:mod:`.config_overrides`);
* on machines without CUDA a distributed launch uses gloo: the process group is initialised
  before the Runner (mmengine's own init calls ``torch.cuda.set_device``) and DDP wraps with
  ``device_ids=None``;
* ``--deepspeed deepspeed_zero2|deepspeed_zero3`` switches to mmengine's ``FlexibleRunner`` with a
  ``DeepSpeedStrategy`` whose values come from the config (precision from the optimizer wrapper,
  micro batch, clipping, accumulation); needs the ``deepspeed`` package. On CPU it runs with
  ``DS_ACCELERATOR=cpu`` through ``tools/dist.sh`` (tested end to end). :func:`build_runner` swaps in
  :class:`~mllm_align.engine.ds_strategy.AtomicDeepSpeedStrategy` (DeepSpeed 0.19 fix, atomic
  checkpoint directories).
"""
from __future__ import annotations

import difflib
import os.path as osp
from typing import Any, Literal, Sequence

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict

from .config_checks import RUNNER_KEYS, check_component_keys, check_settings_agree
from .config_overrides import load_config

DeepSpeedChoice = Literal['deepspeed_zero2', 'deepspeed_zero3']


def check_config_keys(cfg: Config) -> None:
    """Fail at start on keys that mmengine would ignore or reject late, and on settings that disagree.

    PART 1 settings (``llm_name_or_path``, ``max_length``…) are free names; only names within a
    small edit distance of a runner key (``train_dataloder``, ``optim_wraper``) are rejected. Then
    every component dict's keys are checked against its constructor
    (:func:`~mllm_align.engine.config_checks.check_component_keys`: hooks, optimizer, schedulers,
    loops, dataloaders, datasets, model) and shared settings must agree
    (:func:`~mllm_align.engine.config_checks.check_settings_agree`: template, tokenizer, image
    processor, image-token count, sampler batch, loop length).

    Raises:
        KeyError: no ``model``, a misspelt runner key, a key a component does not accept.
        ValueError: settings that must agree do not.
    """
    if 'model' not in cfg:
        raise KeyError(f'Config {cfg.filename} has no `model`: PART 2 must define model=dict(...).')
    for key, value in cfg.items():
        if key in RUNNER_KEYS or callable(value):  # imported classes/functions are config names too
            continue
        close = difflib.get_close_matches(key, RUNNER_KEYS, n=1, cutoff=0.85)
        if close:
            raise KeyError(f'Config {cfg.filename}: unknown key {key!r} — did you mean {close[0]!r}? '
                           'mmengine would silently ignore it.')
    check_component_keys(cfg)
    check_settings_agree(cfg)


Precision = Literal['bf16', 'fp16', 'fp32']


def deepspeed_strategy(stage: DeepSpeedChoice, gradient_accumulation_steps: int = 1,
                       precision: Precision = 'bf16', micro_batch_size: int = 1,
                       gradient_clipping: float = 0.0) -> dict[str, Any]:
    """An mmengine ``DeepSpeedStrategy`` config for ZeRO stage 2 or 3 (xtuner's ZeRO settings).

    Every value is concrete: DeepSpeed itself does not accept the ``'auto'`` placeholders of HF/xtuner
    configs. ``micro_batch_size`` is the per-device batch (the train dataloader's ``batch_size``);
    ``gradient_clipping`` the max norm (0: off); ``precision`` picks DeepSpeed's bf16 or fp16 engine, or
    neither (fp32).
    """
    if precision not in ('bf16', 'fp16', 'fp32'):
        raise ValueError(f"precision={precision!r}: use 'bf16', 'fp16' or 'fp32'.")
    zero_stage = {'deepspeed_zero2': 2, 'deepspeed_zero3': 3}[stage]
    zero: dict[str, Any] = dict(stage=zero_stage, overlap_comm=True, contiguous_gradients=True)
    if zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    return dict(
        type='DeepSpeedStrategy',
        config=dict(
            gradient_accumulation_steps=gradient_accumulation_steps,
            train_micro_batch_size_per_gpu=micro_batch_size, gradient_clipping=float(gradient_clipping),
            zero_optimization=zero,
            bf16=dict(enabled=precision == 'bf16'),
            fp16=dict(enabled=precision == 'fp16', initial_scale_power=16)),
        inputs_to_half=None)


def _cpu_distributed_setup(cfg: Config) -> None:
    """gloo on machines without CUDA: init the process group first and keep DDP off any device."""
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.setdefault('env_cfg', ConfigDict())
    cfg.env_cfg.setdefault('dist_cfg', ConfigDict())
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(type='MMDistributedDataParallel')
    wrapper['device_ids'] = None
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper


def prepare_config(config: str | Config, work_dir: str | None = None, resume: str | bool | None = None,
                   cfg_options: dict | None = None, deepspeed: DeepSpeedChoice | None = None,
                   launcher: str = 'none', extra_hooks: Sequence[dict] = ()) -> Config:
    """Load and complete a training config: work dir, resume, launcher, DeepSpeed.

    Args:
        config: path of the config file, or a loaded Config.
        work_dir: output directory; default ``work_dirs/<config name>``.
        resume: ``None``/False (fresh run); ``'latest'``/True (the newest complete checkpoint in
            ``work_dir``, an error if there is none); ``'auto'`` (the same, or a fresh run when there
            is none); or a checkpoint path (file or DeepSpeed directory). See
            :func:`mllm_align.engine.resume.resolve_resume`.
        cfg_options: ``key=value`` overrides (``--cfg-options``): a PART 1 variable re-evaluates the
            config file, a nested key must exist or be accepted by its component
            (:func:`~mllm_align.engine.config_overrides.load_config`).
        deepspeed: ZeRO stage for a FlexibleRunner run.
        launcher: ``'none'``, ``'pytorch'`` (torchrun) or ``'slurm'``.
        extra_hooks: hook configs appended to ``custom_hooks`` (after ``cfg_options``). ``tools/train.py``
            passes the fault-injection hooks of the test suite here; the engine itself knows none of them.
    """
    cfg = load_config(config, cfg_options)  # PART 1 keys re-evaluate the config (config_overrides)
    check_config_keys(cfg)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        name = osp.splitext(osp.basename(cfg.filename or 'config'))[0]
        cfg.work_dir = osp.join('work_dirs', name)
    cfg.launcher = launcher
    if not resume and cfg.get('resume'):  # `resume = True` in the config: mmengine's auto-resume
        resume = cfg.get('load_from') or 'auto'
    if resume:  # the checkpoint is chosen (and checked) here, on every rank: engine/resume.py
        from .resume import checkpoint_dir, resolve_resume
        target = resolve_resume(checkpoint_dir(cfg), resume, deepspeed=deepspeed is not None)
        cfg.resume, cfg.load_from = (True, target) if target is not None else (False, cfg.get('load_from'))
    if launcher != 'none' and not torch.cuda.is_available():
        _cpu_distributed_setup(cfg)
    if deepspeed is not None:
        _to_deepspeed(cfg, deepspeed)
    if extra_hooks:  # after --cfg-options, so that `custom_hooks=[]` there does not drop them
        cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(hook) for hook in extra_hooks]
    return cfg


def _to_deepspeed(cfg: Config, stage: DeepSpeedChoice) -> None:
    """Rewrite ``cfg`` for mmengine's FlexibleRunner + DeepSpeedStrategy.

    Taken from the config: precision (``AmpOptimWrapper`` → its ``dtype``, bf16 by default; a plain
    ``OptimWrapper`` → fp32), ``accumulative_counts``, ``clip_grad.max_norm``, the per-device batch
    size, the optimizer and ``paramwise_cfg`` (e.g. MoCa's no-decay parameters).
    """
    import importlib.util
    if importlib.util.find_spec('deepspeed') is None:
        raise RuntimeError(f'--deepspeed {stage} needs the deepspeed package: `pip install -e .[gpu]` '
                           '(or deepspeed==0.19.8).')
    optim = cfg.optim_wrapper
    wrapper_type = optim.get('type', 'OptimWrapper')
    wrapper_name = wrapper_type if isinstance(wrapper_type, str) else getattr(wrapper_type, '__name__', '')
    if wrapper_name == 'AmpOptimWrapper':
        dtype = str(optim.get('dtype', 'bfloat16')).replace('torch.', '')
        precision: Precision = 'fp16' if dtype in ('float16', 'fp16', 'half') else 'bf16'
    else:
        precision = 'fp32'
    clip = (optim.get('clip_grad') or {}).get('max_norm', 0.0)
    micro_batch = int(cfg.train_dataloader.get('batch_size', 1))
    cfg.strategy = deepspeed_strategy(stage, gradient_accumulation_steps=int(optim.get('accumulative_counts', 1)),
                                      precision=precision, micro_batch_size=micro_batch,
                                      gradient_clipping=clip or 0.0)
    cfg.optim_wrapper = ConfigDict(type='DeepSpeedOptimWrapper', optimizer=optim.optimizer)
    if optim.get('paramwise_cfg') is not None:
        cfg.optim_wrapper.paramwise_cfg = optim.paramwise_cfg
    cfg.runner_type = 'FlexibleRunner'


def build_runner(cfg: Config) -> Any:
    """Build the mmengine Runner (or FlexibleRunner for DeepSpeed) from a prepared config."""
    from mmengine.runner import Runner

    import mllm_align.engine  # noqa: F401  (atomic checkpoint backend + safe-load allow-list)
    if cfg.get('runner_type') == 'FlexibleRunner':
        from mmengine.runner import FlexibleRunner
        if cfg.get('strategy', {}).get('type') in ('DeepSpeedStrategy', 'AtomicDeepSpeedStrategy'):
            from .ds_strategy import AtomicDeepSpeedStrategy  # registers it; patches mmengine (docstring)
            cfg.strategy.type = AtomicDeepSpeedStrategy.__name__
        keys = set(FlexibleRunner.__init__.__code__.co_varnames)
        kwargs = {k: v for k, v in cfg.items() if k in keys}
        return FlexibleRunner(**kwargs, cfg=cfg)
    return Runner.from_cfg(cfg)


def shutdown_distributed() -> None:
    """Wait for every rank, then destroy the process group — after a *successful* run only.

    After an exception do not call it: a rank that failed would wait here for ranks that wait for
    it in a collective (the hang of a missing image on one rank, or ENOSPC on rank 0); use
    :func:`mllm_align.engine.distributed.exit_on_failure`, which exits without any collective.
    Without this call, a gloo rank that reaches interpreter exit while its communication threads are
    still alive dies with ``terminate called without an active exception`` (SIGABRT) — after the
    run finished, but with a failing exit code and possibly before rank 0 wrote its last checkpoint.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def exit_after_training(code: int = 0) -> None:
    """Flush logs and streams, then end the process at once (``os._exit``), skipping interpreter teardown.

    Call it only after :func:`shutdown_distributed`, when every checkpoint is written. Even with the
    process group destroyed, about one 2-process gloo run in six on CPU (torch 2.13) still aborted
    during interpreter teardown (``terminate called without an active exception``, SIGABRT from a
    C++ thread destructor), turning a finished run into a failed launch; the abort happened with
    and without deepspeed importable. Nothing is left to do at that point, so teardown is skipped.
    """
    from .distributed import flush_and_exit
    flush_and_exit(code)
