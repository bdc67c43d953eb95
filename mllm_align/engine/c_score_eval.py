"""``tools/c_score.py``'s config layer: build a config's vision representation (not its LLM) and score it.

The C score reads only the vision side: ``model.visual_encoder`` (one tower or a MultiTowerEncoder) and the
image processor the config trains with (:func:`~mllm_align.engine.build.image_processor_from_config`). Building
them alone keeps a sweep over many representations cheap.
"""
from __future__ import annotations

import os
from typing import Any

from ..data.spair import load_spair_pairs
from ..evaluation.c_score import CScoreResult, c_score
from .build import image_processor_from_config, load_config

__all__ = ['c_score_from_config', 'vision_from_config']


def vision_from_config(config: Any, cfg_options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(vision encoder, image processor) of a training config, built without the LLM, in eval mode."""
    from ..models.base import build_module

    cfg = load_config(config, cfg_options)
    encoder_cfg = (cfg.get('model') or {}).get('visual_encoder')
    if encoder_cfg is None:
        raise KeyError(f'Config {cfg.filename} has no model.visual_encoder: the C score scores a vision '
                       'representation (a LLaVA-style config).')
    import mllm_align.models  # noqa: F401  (registers the model types named by string)
    encoder = build_module(encoder_cfg.to_dict() if hasattr(encoder_cfg, 'to_dict') else dict(encoder_cfg))
    processor = image_processor_from_config(cfg)
    if processor is None:
        raise ValueError(f'Config {cfg.filename}: no image processor found (train dataset image_processor or '
                         'the visual encoder directory).')
    return encoder.eval(), processor


def c_score_from_config(config: str | os.PathLike | Any, *, spair_root: str | os.PathLike, split: str = 'test',
                        cfg_options: dict[str, Any] | None = None, categories: list[str] | None = None,
                        limit: int | None = None, **c_score_kwargs: Any) -> CScoreResult:
    """C score of ``config``'s vision representation on the SPair-format pairs under ``spair_root``.

    ``c_score_kwargs`` go to :func:`~mllm_align.evaluation.c_score.c_score` (convention, alpha, match, average,
    batch_size, device, progress).
    """
    encoder, processor = vision_from_config(config, cfg_options)
    pairs = load_spair_pairs(spair_root, split=split, categories=categories, limit=limit)
    if not pairs:
        raise ValueError(f'{spair_root}: no {split} pairs.')
    result = c_score(encoder, processor, pairs, **c_score_kwargs)
    result.settings.update(spair_root=str(spair_root), split=split, limit=limit)
    return result
