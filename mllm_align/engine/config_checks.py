"""Start-of-run checks of a loaded config: no misspelt component argument, no settings that disagree.

mmengine builds components late: a hook is built when the Runner starts, a loop when ``train()``
runs, and ``CheckpointHook`` forwards unknown keyword arguments to ``save_checkpoint``, so
``default_hooks.checkpoint.intervall=2`` fails only at the first save. Here, before any model is
built or any data read:

* :func:`check_component_keys` checks every ``dict(type=..., ...)`` of the runner sections (hooks,
  optimizer wrapper and optimizer, parameter schedulers, loops, dataloaders, datasets, samplers,
  the model and its parts) against the constructor of the class or function ``type`` names
  (resolved directly or through mmengine's registries), plus the keys mmengine itself consumes
  (``priority`` of a hook, ``convert_to_iter_based`` of a scheduler…); untyped dataloader and loop
  dicts are checked against what mmengine passes on. An unknown key names the section, the class
  and the closest accepted key.
* :func:`check_settings_agree` checks the settings that several components must share: the chat
  template of the model and of every dataset, the tokenizer, the image processor of the dataset
  and of the hooks, the image-token count a dataset reserves (``num_image_tokens``) against what
  the vision tower produces (computed from the tower's saved HF ``config.json``, no weights read),
  the image processor's output size against the tower's ``image_size``, the length-grouped
  sampler's batch against the dataloader's, and a ``TrainLoop`` given both ``max_epochs`` and
  ``max_iters``.
"""
from __future__ import annotations

import difflib
import inspect
import json
import logging
import os.path as osp
from collections.abc import Iterator, Mapping
from typing import Any

from mmengine.config import Config


class ConfigKeyError(KeyError):
    """A config key that would be ignored or rejected late: the message names the key and the fix."""

    def __str__(self) -> str:  # KeyError would print the repr of the message (escaped newlines)
        return str(self.args[0]) if self.args else ''


class ConfigMismatchError(ValueError):
    """Two config settings that must agree do not: the message names both keys, values and the fix."""


RUNNER_KEYS = (
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
    'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler', 'val_evaluator',
    'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor', 'load_from', 'resume',
    'launcher', 'env_cfg', 'log_processor', 'log_level', 'visualizer', 'default_scope', 'randomness',
    'experiment_name', 'cfg', 'strategy', 'model_wrapper_cfg', 'find_unused_parameters', 'compile',
    'sync_bn')
"""Top-level keys mmengine's Runner reads; every other top-level name is a PART 1/2 variable."""

# Keys mmengine reads itself before passing the rest of a dict to the constructor.
_EXTRA_KEYS: dict[str, set[str]] = {
    'hook': {'priority'},
    'param_scheduler': {'convert_to_iter_based'},
    'optim_wrapper': {'constructor', 'paramwise_cfg'},
    'loop': {'by_epoch'},
}
# Untyped dataloader dicts: what ``Runner.build_dataloader`` pops, the rest goes to torch's DataLoader.
_DATALOADER_RUNNER_KEYS = {'dataset', 'sampler', 'batch_sampler', 'collate_fn', 'worker_init_fn',
                           'num_batch_per_epoch', 'disable_subprocess_warning'}
_DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
_LOOPS = {'train_cfg': 'train', 'val_cfg': 'val', 'test_cfg': 'test'}
# Sections whose dicts are not constructor arguments (DeepSpeed JSON config, logging, env).
_SKIP_SECTIONS = {'strategy', 'cfg', 'launcher', 'work_dir', 'resume', 'load_from', 'log_level',
                  'default_scope', 'experiment_name'}
# Untyped dicts with a fixed set of keys (what mmengine/torch read from them).
_FIXED_KEYS: dict[str, tuple[set[str], str]] = {
    'optim_wrapper.clip_grad': ({'type', 'max_norm', 'norm_type', 'error_if_nonfinite', 'foreach', 'clip_value'},
                                'torch.nn.utils.clip_grad_norm_/clip_grad_value_ (via OptimWrapper)'),
    'optim_wrapper.paramwise_cfg': ({'bias_lr_mult', 'bias_decay_mult', 'norm_decay_mult', 'dwconv_decay_mult',
                                     'flat_decay_mult', 'dcn_offset_lr_mult', 'custom_keys', 'bypass_duplicate'},
                                    'mmengine DefaultOptimWrapperConstructor paramwise_cfg'),
    'randomness': ({'seed', 'diff_rank_seed', 'deterministic'}, 'mmengine Runner.set_randomness'),
    'env_cfg': ({'cudnn_benchmark', 'mp_cfg', 'dist_cfg', 'resource_limit'}, 'mmengine Runner env_cfg'),
    'env_cfg.mp_cfg': ({'mp_start_method', 'opencv_num_threads'}, 'mmengine Runner env_cfg.mp_cfg'),
}


def accepted_keys(target: Any) -> set[str] | None:
    """Keyword arguments ``target`` (a class or function) accepts; ``None`` when it accepts any.

    A class whose ``__init__`` takes ``**kwargs`` is followed up its MRO (mixins pass their kwargs
    on, e.g. mmengine's ``LinearLR`` → ``LinearParamScheduler``); reaching ``object`` means the
    extra kwargs end in an error, so the set is closed. A function with ``**kwargs`` accepts any.
    """
    names: set[str] = set()
    if inspect.isclass(target):
        for klass in target.__mro__:
            if klass is object:
                return names
            init = klass.__dict__.get('__init__')
            if init is None:
                continue
            try:
                params = inspect.signature(init).parameters.values()
            except (TypeError, ValueError):
                return None
            names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            names.discard('self')
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                return names
        return names
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _registry_for(path: str) -> Any:
    """The mmengine registry that builds the component at dotted ``path`` (None: not registry-built)."""
    from mmengine import registry as reg
    root, _, rest = path.partition('.')
    last = path.rsplit('.', 1)[-1]
    if root in ('default_hooks', 'custom_hooks'):
        return reg.HOOKS
    if root == 'param_scheduler':
        return reg.PARAM_SCHEDULERS
    if root == 'optim_wrapper':
        return reg.OPTIMIZERS if rest == 'optimizer' else reg.OPTIM_WRAPPERS if not rest else None
    if root in _LOOPS and not rest:
        return reg.LOOPS
    if root in _DATALOADERS:
        return {'dataset': reg.DATASETS, 'datasets': reg.DATASETS, 'sampler': reg.DATA_SAMPLERS,
                'batch_sampler': reg.DATA_SAMPLERS, 'collate_fn': reg.FUNCTIONS}.get(
                    last if not last.isdigit() else path.rsplit('.', 2)[-2])
    if root == 'model' and not rest:
        return reg.MODELS
    if root == 'visualizer':
        return reg.VISBACKENDS if 'vis_backends' in path else reg.VISUALIZERS if not rest else None
    return None


def resolve_type(value: Any, path: str) -> Any:
    """The class/function a ``type`` value names (a callable, or a registry name); None if unknown."""
    if callable(value):
        return value
    if isinstance(value, str):
        registry = _registry_for(path)
        if registry is not None:
            try:
                return registry.get(value)
            except Exception:  # noqa: BLE001 - an unresolvable name is reported by the build itself
                return None
    return None


def _default_loop(path: str, section: Mapping) -> Any:
    from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, TestLoop, ValLoop
    kind = _LOOPS[path]
    if kind == 'train':
        return EpochBasedTrainLoop if section.get('by_epoch', True) else IterBasedTrainLoop
    return ValLoop if kind == 'val' else TestLoop


def _dataloader_keys() -> set[str]:
    from torch.utils.data import DataLoader
    return (accepted_keys(DataLoader) or set()) | _DATALOADER_RUNNER_KEYS


def _kind(path: str) -> str | None:
    root, _, rest = path.partition('.')
    if root in ('default_hooks', 'custom_hooks') and rest.count('.') == 0:
        return 'hook'
    if root == 'param_scheduler':
        return 'param_scheduler'
    if root == 'optim_wrapper' and not rest:
        return 'optim_wrapper'
    if root in _LOOPS and not rest:
        return 'loop'
    return None


def accepted_keys_at(path: str, section: Mapping) -> tuple[set[str] | None, str] | None:
    """What the dict at dotted ``path`` accepts, and the name of what consumes it.

    Returns ``(keys, consumer)`` (``keys`` None: anything), or None when the dict is not checked
    (no resolvable ``type`` and not a dataloader/loop/optimizer-wrapper dict).
    """
    if path in _FIXED_KEYS and not (path == 'optim_wrapper.paramwise_cfg' and 'type' in section):
        return _FIXED_KEYS[path]
    target = None
    if 'type' in section:
        target = resolve_type(section['type'], path)
    elif path in _LOOPS:
        target = _default_loop(path, section)
    elif path == 'optim_wrapper':
        from mmengine.optim import OptimWrapper
        target = OptimWrapper
    elif path in _DATALOADERS:
        return _dataloader_keys(), 'torch DataLoader (via Runner.build_dataloader)'
    if target is None:
        return None
    keys = accepted_keys(target)
    kind = _kind(path)
    if keys is not None and kind is not None:
        keys = keys | _EXTRA_KEYS[kind]
    return keys, f'{getattr(target, "__module__", "?")}.{getattr(target, "__qualname__", target)}'


def unknown_key_message(cfg_name: str, path: str, key: str, keys: set[str], consumer: str) -> str:
    """The error text for ``path.key`` not accepted by ``consumer``, with the closest accepted keys."""
    close = difflib.get_close_matches(key, sorted(keys), n=3, cutoff=0.6)
    hint = f' — did you mean {close[0]!r}?' if close else ''
    full = f'{path}.{key}' if path else key
    return (f'Config {cfg_name}: {full!r} is not an argument of {consumer}{hint} '
            f'Accepted keys: {", ".join(sorted(keys))}. Fix the key in the config or in --cfg-options '
            f'(e.g. --cfg-options {path}.{close[0] if close else "<key>"}=...).')


def _walk(value: Any, path: str) -> Iterator[tuple[str, Mapping]]:
    """Every dict under ``value`` with its dotted path (list items as ``path.N``)."""
    if isinstance(value, Mapping):
        yield path, value
        for key, sub in value.items():
            yield from _walk(sub, f'{path}.{key}')
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            yield from _walk(sub, f'{path}.{i}')


def check_component_keys(cfg: Config) -> None:
    """Raise :class:`ConfigKeyError` for a key that the component built from its dict does not accept.

    Covers every dict with a resolvable ``type`` in the runner sections (``model``, hooks,
    ``optim_wrapper``, ``param_scheduler``, loops, dataloaders and their datasets/samplers,
    ``visualizer``) plus the untyped dataloader, loop and optimizer-wrapper dicts.
    """
    name = cfg.filename or '<in-memory config>'
    for section in cfg.keys():
        if section in _SKIP_SECTIONS or section.startswith('_'):
            continue
        value = cfg[section]
        if callable(value) or not isinstance(value, (Mapping, list, tuple)):
            continue
        for path, sub in _walk(value, section):
            found = accepted_keys_at(path, sub)
            if found is None or found[0] is None:
                continue
            keys, consumer = found
            for key in sub.keys():
                if key != 'type' and key not in keys:
                    raise ConfigKeyError(unknown_key_message(name, path, key, keys, consumer))


# ----------------------------------------------------------------------------------------------------
# Settings that must agree
# ----------------------------------------------------------------------------------------------------
def _datasets(cfg: Config) -> Iterator[tuple[str, Mapping]]:
    """(path, dict) of every dataset dict with a ``template`` or ``num_image_tokens`` in the dataloaders."""
    for loader in _DATALOADERS:
        section = cfg.get(loader)
        if not isinstance(section, Mapping) or section.get('dataset') is None:
            continue
        for path, sub in _walk(section['dataset'], f'{loader}.dataset'):
            if 'template' in sub or 'num_image_tokens' in sub:
                yield path, sub


def _hooks(cfg: Config) -> Iterator[tuple[str, Mapping]]:
    for i, hook in enumerate(cfg.get('custom_hooks') or []):
        if isinstance(hook, Mapping):
            yield f'custom_hooks.{i}', hook
    for key, hook in (cfg.get('default_hooks') or {}).items():
        if isinstance(hook, Mapping):
            yield f'default_hooks.{key}', hook


def _identity(value: Any) -> Any:
    """What makes two tokenizer/image-processor settings the same: their path, else the value."""
    if isinstance(value, Mapping):
        return value.get('path', value.get('pretrained_model_name_or_path', repr(dict(value))))
    return value


def _processor_overrides(value: Any) -> dict[str, Any]:
    """The attributes an image-processor config dict sets besides its type and path."""
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if k not in ('type', 'path', 'pretrained_model_name_or_path',
                                                        'trust_remote_code', 'use_fast')}


def _processor_identity(value: Any) -> Any:
    """An image processor's path, with the attributes a config overrides (two sizes of one path differ)."""
    overrides = _processor_overrides(value)
    return (_identity(value), sorted(overrides.items(), key=str)) if overrides else _identity(value)


def _require_same(cfg_name: str, what: str, entries: list[tuple[str, Any]], fix: str) -> None:
    distinct = {repr(v) for _, v in entries}
    if len(distinct) > 1:
        listing = '; '.join(f'{path} = {value!r}' for path, value in entries)
        raise ConfigMismatchError(f'Config {cfg_name}: the {what} must be the same everywhere, found '
                                  f'{listing}. {fix}')


def _json(path: str) -> dict | None:
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def tower_tokens(path: str, select_feature: str = 'patch', image_size: int | None = None,
                 pool: int = 1) -> tuple[int, int] | None:
    """(tokens per image, image_size) a vision tower saved at ``path`` produces, from its config.json.

    Mirrors :class:`~mllm_align.models.VisionTower`: ``(image_size // patch_size // pool) ** 2`` patch
    tokens (``image_size`` the tower's override, else the config's), plus the prefix tokens (CLS: 1 for
    CLIP, 1 + registers for DINOv2, 0 for SigLIP) with ``select_feature='cls_patch'``; and
    :class:`~mllm_align.models.cnn_tower.CNNFeatureMapTower`'s flattened map (EfficientNet-Lite0). None when
    the directory or a size is missing, or the tower type is not one of those (:func:`check_settings_agree`
    then warns that it could not check).
    """
    config = _json(osp.join(str(path), 'config.json'))
    if config is None:
        return None
    config = config.get('vision_config', config)
    if config.get('architecture') == 'efficientnet-lite0':
        from mllm_align.models.cnn_tower import feature_grid_size
        size = image_size or config.get('image_size')
        return (feature_grid_size(size) ** 2, size) if isinstance(size, int) else None
    size, patch = image_size or config.get('image_size'), config.get('patch_size')
    model_type = str(config.get('model_type', ''))
    if not isinstance(size, int) or not isinstance(patch, int) or patch <= 0:
        return None
    if model_type.startswith('siglip'):
        prefix = 0
    elif model_type.startswith('clip'):
        prefix = 1
    elif model_type.startswith('dinov2'):
        prefix = 1 + int(config.get('num_register_tokens') or 0)
    else:
        return None
    tokens = (size // patch // max(int(pool), 1)) ** 2 + (prefix if select_feature == 'cls_patch' else 0)
    return tokens, size


def processor_output_size(path: str, overrides: Mapping[str, Any] | None = None) -> int | None:
    """Square side the image processor saved at ``path`` outputs (crop, else resize), if readable.

    ``overrides``: attributes a config passes to ``load_image_processor`` (``size``, ``crop_size``, …).
    """
    config = _json(osp.join(str(path), 'preprocessor_config.json'))
    if config is None:
        return None
    config = {**config, **(overrides or {})}
    size = config.get('crop_size') if config.get('do_center_crop') else config.get('size')
    if isinstance(size, Mapping):
        side = size.get('height') or size.get('shortest_edge')
        width = size.get('width', side)
        return side if side == width and isinstance(side, int) else None
    return size if isinstance(size, int) else None


def check_settings_agree(cfg: Config) -> None:
    """Raise :class:`ConfigMismatchError` when settings that several components share disagree.

    Checked: chat template (model vs every dataset), tokenizer path (model vs datasets vs hooks),
    image processor (datasets vs hooks), each dataset's ``num_image_tokens`` vs the vision
    tower's token count, the image processor's output size vs the tower's ``image_size``, a
    ``LengthGroupedSampler``'s ``per_device_batch_size`` vs batch size × accumulation, and a
    ``TrainLoop`` given both ``max_epochs`` and ``max_iters``.
    """
    name = cfg.filename or '<in-memory config>'
    model = cfg.get('model') if isinstance(cfg.get('model'), Mapping) else {}
    datasets = list(_datasets(cfg))
    hooks = list(_hooks(cfg))

    templates = [('model.template', model['template'])] if model.get('template') is not None else []
    templates += [(f'{p}.template', d['template']) for p, d in datasets if d.get('template') is not None]
    _require_same(name, 'chat template', templates,
                  'Set the PART 1 variable, which re-evaluates every use: --cfg-options template=<name>.')

    tokenizers = [(f'{p}.tokenizer', _identity(d['tokenizer']))
                  for p, d in [('model', model), *datasets, *hooks] if d.get('tokenizer') is not None]
    _require_same(name, 'tokenizer', tokenizers,
                  'The model and the data must tokenize alike: point every tokenizer at the same path '
                  '(PART 1 `llm_name_or_path`, e.g. --cfg-options llm_name_or_path=<dir>).')

    processors = [(f'{p}.image_processor', _processor_identity(d['image_processor']))
                  for p, d in [*datasets, *hooks] if d.get('image_processor') is not None]
    cfg_proc = {f'{p}.image_processor': d['image_processor'] for p, d in [*datasets, *hooks]
                if d.get('image_processor') is not None}
    _require_same(name, 'image processor', processors,
                  'Images must be preprocessed as in training: use one image processor everywhere '
                  '(PART 1 `visual_encoder_name_or_path`).')

    tower = model.get('visual_encoder')
    if isinstance(tower, Mapping) and isinstance(tower.get('towers'), (list, tuple)):
        _check_multi_tower(name, tower, datasets, processors, cfg_proc)
    elif isinstance(tower, Mapping) and isinstance(tower.get('path'), str):
        found = tower_tokens(tower['path'], str(tower.get('select_feature', 'patch')), tower.get('image_size'),
                             int(tower.get('pool', 1)))
        if found is None and osp.isfile(osp.join(tower['path'], 'config.json')):
            from mmengine.logging import print_log
            print_log(f'Config {name}: cannot compute the image-token count of the vision tower at '
                      f'{tower["path"]!r} from its config.json (not CLIP/SigLIP/DINOv2); make sure '
                      'num_image_tokens equals the features per image it produces.', logger='current',
                      level=logging.WARNING)
        if found is not None:
            tokens, size = found
            for path, data in datasets:
                if 'num_image_tokens' in data and data['num_image_tokens'] != tokens:
                    raise ConfigMismatchError(
                        f'Config {name}: {path}.num_image_tokens = {data["num_image_tokens"]} but the vision '
                        f'tower at model.visual_encoder.path = {tower["path"]!r} '
                        f'(select_feature={tower.get("select_feature", "patch")!r}) produces {tokens} '
                        f'tokens per image. Set num_image_tokens = {tokens} (PART 1; --cfg-options '
                        f'num_image_tokens={tokens}).')
            for path, proc in processors:
                side = processor_output_size(_identity(cfg_proc[path]), _processor_overrides(cfg_proc[path]))
                if not isinstance(side, int):
                    side = None
                if side is not None and side != size:
                    raise ConfigMismatchError(
                        f'Config {name}: {path} ({proc!r}) outputs {side}×{side} images but the vision '
                        f'tower at model.visual_encoder.path = {tower["path"]!r} expects image_size={size}. '
                        'Use the image processor saved with the tower (PART 1 visual_encoder_name_or_path).')
    _check_sampler_batch(cfg, name)
    _check_loop_length(cfg, name)


def _check_multi_tower(name: str, tower: Mapping[str, Any], datasets: list, processors: list,
                       cfg_proc: Mapping[str, Any]) -> None:
    """A MultiTowerEncoder config: ``num_image_tokens`` = grid² (``grid``, else the first tower's patch grid),
    and each sub-processor of a MultiTowerImageProcessor outputs its tower's input size."""
    found = []
    for sub in tower['towers']:
        if not (isinstance(sub, Mapping) and isinstance(sub.get('path'), str)):
            return  # built modules or remote code: nothing to read from config.json
        one = tower_tokens(sub['path'], 'patch', sub.get('image_size'), int(sub.get('pool', 1)))
        if one is None:
            return
        found.append(one)
    grid = tower.get('grid') or round(found[0][0] ** 0.5)
    tokens = int(grid) ** 2
    for path, data in datasets:
        if 'num_image_tokens' in data and data['num_image_tokens'] != tokens:
            raise ConfigMismatchError(
                f'Config {name}: {path}.num_image_tokens = {data["num_image_tokens"]} but the multi-tower encoder '
                f'(model.visual_encoder) puts every tower on a {grid}×{grid} grid: {tokens} tokens per image. Set '
                f'num_image_tokens = {tokens}.')
    for path, _ in processors:
        proc = cfg_proc[path]
        subs = proc.get('processors') if isinstance(proc, Mapping) else None
        if not isinstance(subs, (list, tuple)):
            raise ConfigMismatchError(
                f'Config {name}: {path} is one image processor but model.visual_encoder has '
                f'{len(tower["towers"])} towers: use dict(type=MultiTowerImageProcessor, processors=[…]) with one '
                'processor per tower, in tower order.')
        if len(subs) != len(found):
            raise ConfigMismatchError(f'Config {name}: {path} has {len(subs)} processors for {len(found)} towers.')
        for i, (sub, (_, size)) in enumerate(zip(subs, found)):
            side = processor_output_size(_identity(sub), _processor_overrides(sub)) if isinstance(sub, Mapping) \
                else None
            if isinstance(side, int) and side != size:
                raise ConfigMismatchError(
                    f'Config {name}: {path}.processors[{i}] outputs {side}×{side} images but tower {i} '
                    f'({tower["towers"][i]["path"]!r}) expects image_size={size}.')


def _check_sampler_batch(cfg: Config, name: str) -> None:
    from mllm_align.data import LengthGroupedSampler
    loader = cfg.get('train_dataloader')
    if not isinstance(loader, Mapping) or not isinstance(loader.get('sampler'), Mapping):
        return
    sampler = loader['sampler']
    kind = resolve_type(sampler.get('type'), 'train_dataloader.sampler')
    if not (inspect.isclass(kind) and issubclass(kind, LengthGroupedSampler)):
        return
    accum = (cfg.get('optim_wrapper') or {}).get('accumulative_counts', 1)
    want = loader.get('batch_size', 1) * accum
    if sampler.get('per_device_batch_size') != want:
        raise ConfigMismatchError(
            f'Config {name}: train_dataloader.sampler.per_device_batch_size = '
            f'{sampler.get("per_device_batch_size")} but train_dataloader.batch_size × '
            f'optim_wrapper.accumulative_counts = {loader.get("batch_size", 1)} × {accum} = {want}: length '
            'groups would not match the batches. Set the PART 1 variables instead (--cfg-options '
            'batch_size=N accumulative_counts=M), which update both.')


def _check_loop_length(cfg: Config, name: str) -> None:
    from mllm_align.engine.loops import TrainLoop
    loop = cfg.get('train_cfg')
    if not isinstance(loop, Mapping):
        return
    kind = resolve_type(loop.get('type'), 'train_cfg')
    if inspect.isclass(kind) and issubclass(kind, TrainLoop) and \
            loop.get('max_epochs') is not None and loop.get('max_iters') is not None:
        raise ConfigMismatchError(
            f'Config {name}: train_cfg sets both max_epochs = {loop["max_epochs"]} and max_iters = '
            f'{loop["max_iters"]}; TrainLoop takes exactly one. --cfg-options train_cfg.max_iters=N alone '
            'makes max_epochs give way (and train_cfg.max_epochs=N alone max_iters).')
