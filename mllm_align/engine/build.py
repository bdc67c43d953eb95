"""The config layer of the tools: read an mmengine config once and hand built objects to the library.

Library code (``mllm_align/models``, ``mllm_align/evaluation``) takes built models, processors and
plain settings and never opens a config file; the tools (``tools/convert_to_hf.py``,
``tools/eval_mir.py``, …) and hooks call these functions to get them from a training config.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from mmengine.config import Config

    from ..models.base import MultimodalModel

__all__ = ['build_model_from_config', 'config_sha256', 'default_probe_sources', 'export_settings_from_config',
           'image_processor_from_config', 'load_config']


def load_config(config: 'str | os.PathLike | Config', cfg_options: 'dict[str, Any] | None' = None) -> 'Config':
    """``config`` itself if it is a loaded ``Config``, else ``Config.fromfile(config)``; with ``cfg_options``
    (``--cfg-options``), loaded through :func:`~mllm_align.engine.config_overrides.load_config`, so that PART 1
    overrides reach every value derived from them.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    from mmengine.config import Config

    if cfg_options:
        from .config_overrides import load_config as load_config_with_options
        return load_config_with_options(config, cfg_options)
    if isinstance(config, Config):
        return config
    if not Path(config).is_file():
        raise FileNotFoundError(f'Config {str(config)!r} does not exist.')
    return Config.fromfile(str(config))


def config_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a config file's bytes (part of an evaluation's settings fingerprint)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_model_from_config(config: 'str | os.PathLike | Config', checkpoint: str | os.PathLike | None = None,
                            strict: bool = True) -> 'MultimodalModel':
    """Build ``cfg.model`` of an mmengine config and load a trained checkpoint into it.

    Args:
        config: a config file path or a loaded ``mmengine.config.Config``.
        checkpoint: an ``iter_N.pth`` of this config's run (trainable weights only), or None for
            the model as the config builds it.
        strict: fail if the checkpoint lacks a parameter the model trains (the export would carry
            a random projector or adapter) or holds keys the model does not have (e.g. a LoRA
            checkpoint exported with a config that sets no ``llm_lora``).

    Returns:
        The model, in eval mode.

    Raises:
        KeyError: the config has no ``model``.
        TypeError: it builds something that is not a ``mllm_align.models.MultimodalModel``.
    """
    from mmengine.registry import MODELS

    from ..models.base import MultimodalModel
    from .checkpoint import load_trained_weights

    cfg = load_config(config)
    if 'model' not in cfg:
        raise KeyError(f'Config {cfg.filename} has no `model`: PART 2 must define model=dict(...).')
    model = MODELS.build(cfg.model)
    if not isinstance(model, MultimodalModel):
        raise TypeError(f'Config {cfg.filename} builds a {type(model).__name__}, not a '
                        'mllm_align.models.MultimodalModel (LLaVAModel, …).')
    if checkpoint is not None:
        load_trained_weights(model, checkpoint, strict=strict)
    return model.eval()


def image_processor_from_config(config: 'str | os.PathLike | Config') -> Any:
    """The image processor a config uses, or None.

    Looked up in order: a top-level ``image_processor`` (xtuner's PART 2 layout), the train
    dataset's ``image_processor``, then the visual encoder directory when it holds a
    ``preprocessor_config.json``.
    """
    from ..models.base import build_module
    from ..models.builders import load_image_processor

    cfg = load_config(config)
    candidates = [cfg.get('image_processor'),
                  ((cfg.get('train_dataloader') or {}).get('dataset') or {}).get('image_processor')]
    for cand in candidates:
        if cand is not None:
            return build_module(cand)
    vision_path = ((cfg.get('model') or {}).get('visual_encoder') or {}).get('path')
    if vision_path and (Path(vision_path) / 'preprocessor_config.json').is_file():
        return load_image_processor(str(vision_path))
    return None


def export_settings_from_config(config: 'str | os.PathLike | Config') -> dict[str, Any]:
    """What the HF export needs to reproduce training inputs, read from the training config.

    Returns ``dict(template=…, pad_image_to_square=…)``: the template is ``model.template``, else
    the train dataset's ``template`` (None if neither is set); ``pad_image_to_square`` is the train
    dataset's (default True, :class:`~mllm_align.data.LLaVADataset`'s default).

    Raises:
        ValueError: ``model.template`` and the train dataset's ``template`` differ (the model
            was trained on the dataset's; fix the config that trained it).
    """
    cfg = load_config(config)
    dataset = (cfg.get('train_dataloader') or {}).get('dataset') or {}
    model_template = (cfg.get('model') or {}).get('template')
    data_template = dataset.get('template')
    if model_template is not None and data_template is not None and model_template != data_template:
        raise ValueError(f'Config {cfg.filename}: model.template={model_template!r} but '
                         f'train_dataloader.dataset.template={data_template!r}; the model was trained on the '
                         "dataset's template. Make them agree (set the PART 1 `template`) before exporting.")
    return dict(template=model_template if model_template is not None else data_template,
                pad_image_to_square=bool(dataset.get('pad_image_to_square', True)))


def default_probe_sources(cfg: Any) -> tuple[str, str | None]:
    """``(images, image_folder)`` for a MIR probe from a config's train dataset (``data_path``, ``image_folder``).

    Raises:
        ValueError: the config has no train dataset with a ``data_path``.
    """
    dataset = ((cfg.get('train_dataloader') or {}).get('dataset') or {})
    if 'datasets' in dataset:  # a concatenation: its first part
        dataset = (dataset['datasets'] or [{}])[0]
    data_path = dataset.get('data_path')
    if not data_path:
        raise ValueError(f'Config {getattr(cfg, "filename", "")} has no train_dataloader.dataset.data_path to take '
                         'probe images from; pass --images (a folder of images or a LLaVA JSON).')
    folder = dataset.get('image_folder')
    return str(data_path), None if folder is None else str(folder)
