"""``tools/a_score.py``'s config layer: the A score (v3 and v1) of stage-1 checkpoints from their config.

v3 (:func:`evaluate_a_score`)::

    config (+ cfg_options) ──► its train dataset (or --data / --image-folder), N pairs drawn with a seed,
                               tokenised and processed exactly as training does; the model's builder
    target ──► mllm_align.evaluation.evaluate_checkpoints(target, AScoreEvaluator(pairs), build_model=…)
               (a_score.json / a_score.csv / a_score_curve.png; already-scored checkpoints skipped)

v1 (:func:`evaluate_a_score_v1`): the target's and each reference's projected image tokens on the same images
(each model built from its config + checkpoint), scored by :func:`~mllm_align.metrics.alignment.a_score_v1`.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from mmengine.logging import print_log

from ..evaluation.a_score import A_SCORE_RESULTS_FORMAT, AScoreEvaluator
from ..evaluation.checkpoints import discover_checkpoints, untrained_snapshot
from ..evaluation.runner import default_out_dir, evaluate_checkpoints
from .build import build_model_from_config, config_sha256, load_config

__all__ = ['RESULTS_FORMAT', 'caption_pairs_from_config', 'check_hf_dir_matches_pairs', 'evaluate_a_score',
           'evaluate_a_score_v1']

RESULTS_FORMAT = A_SCORE_RESULTS_FORMAT


def _file_fingerprint(path: Any) -> dict[str, Any]:
    p = Path(str(path))
    if not p.is_file():
        return dict(path=str(p))
    st = p.stat()
    return dict(path=str(p.resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns)


def caption_pairs_from_config(cfg: Any, *, data: str | os.PathLike | None = None,
                              image_folder: str | os.PathLike | None = None, num_pairs: int = 100,
                              seed: int = 0) -> tuple[list[dict[str, Any]], Callable, dict[str, Any]]:
    """(N dataset items, collate_fn, settings) for the A score: the config's train dataset (``data`` /
    ``image_folder`` replace its JSON and image folder), N items drawn without replacement with ``seed``
    (sorted by index), tokenised and processed as training does. Fewer than N items: a warning, all used."""
    from mmengine.registry import FUNCTIONS

    import mllm_align.data  # noqa: F401  (registers the dataset types)

    from ..data.collate import llava_collate_fn
    from ..models.base import build_module

    loader = cfg.get('train_dataloader') or {}
    ds_cfg = loader.get('dataset')
    if ds_cfg is None:
        raise KeyError(f'Config {cfg.filename} has no train_dataloader.dataset: the A score reads its caption '
                       'data (or pass --data and --image-folder).')
    ds_cfg = copy.deepcopy(ds_cfg)  # a ConfigDict: its lazy `type`s stay buildable
    if data is not None:
        ds_cfg['data_path'] = str(data)
    if image_folder is not None:
        ds_cfg['image_folder'] = str(image_folder)
    ds_cfg['on_bad_sample'] = 'raise'  # a pair that cannot be read is named, never silently replaced
    dataset = build_module(ds_cfg)
    n = len(dataset)
    if n < num_pairs:
        print_log(f'A score: {ds_cfg.get("data_path")} has {n} samples, fewer than the {num_pairs} asked for; '
                  f'scoring all {n}.', logger='current', level=30)
    count = min(n, num_pairs)
    indices = sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=count, replace=False))
    samples = [dataset[i] for i in indices]
    if any(s.get('pixel_values') is None for s in samples):
        missing = [str(s.get('id')) for s in samples if s.get('pixel_values') is None][:5]
        raise ValueError(f'A score: samples {missing} of {ds_cfg.get("data_path")} have no image; the A score '
                         'needs image–caption pairs.')
    collate_cfg = loader.get('collate_fn') or dict(type=llava_collate_fn)
    collate_type = collate_cfg.get('type', llava_collate_fn)
    collate_type = FUNCTIONS.get(collate_type) if isinstance(collate_type, str) else collate_type
    kwargs = {k: v for k, v in collate_cfg.items() if k != 'type'}
    pad_id = getattr(getattr(dataset, 'tokenizer', None), 'pad_token_id', None)
    if pad_id is not None and 'pad_token_id' not in kwargs:
        kwargs['pad_token_id'] = pad_id

    def collate(items: list) -> dict[str, Any]:
        return collate_type(items, **kwargs)

    settings = dict(data=_file_fingerprint(ds_cfg.get('data_path')), image_folder=str(ds_cfg.get('image_folder')),
                    seed=seed, requested_pairs=num_pairs, template=str(ds_cfg.get('template')),
                    max_length=ds_cfg.get('max_length'))
    return samples, collate, settings


def evaluate_a_score(target: str | os.PathLike | None, config: str | os.PathLike, *,
                     data: str | os.PathLike | None = None, image_folder: str | os.PathLike | None = None,
                     num_pairs: int = 100, seed: int = 0, batch_size: int = 8, device: str | None = None,
                     out_dir: str | os.PathLike | None = None, cfg_options: dict[str, Any] | None = None,
                     untrained: bool = False, progress: bool = True, plots: bool = True, overwrite: bool = False,
                     console: Any = None, model_factory: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    """A_v3 of every checkpoint of ``target`` (a work dir of ``iter_*.pth``, one checkpoint, or an HF directory).

    Args:
        target: what to score (None with ``untrained=True`` and ``out_dir``: only the untrained model). An HF
            model directory (a ``tools/convert_to_hf.py`` export, or any directory a registered loader reads) is
            scored on the pairs its ``config`` makes, after :func:`check_hf_dir_matches_pairs`.
        config: the stage-1 config the checkpoints were trained with (for an HF directory: whose data and
            preprocessing the pairs follow).
        data, image_folder: caption pairs other than the config's train data (LLaVA JSON).
        num_pairs, seed: N pairs drawn without replacement (deterministic).
        batch_size: pairs per forward.
        device: default CUDA if available.
        out_dir: results folder (default ``<work dir>/a_score``).
        cfg_options: ``--cfg-options`` for the config (e.g. ``{'vision_setting': 'tiny_siglip'}``).
        untrained: also score the model as the config builds it, as iteration 0.
        progress, plots, overwrite, console: as :func:`~mllm_align.evaluation.evaluate_checkpoints`.
        model_factory: builds the model instead of the config (tests).

    Returns:
        The records (``a_score_v3``, ``caption_nll``, ``pairs``, ``tokens``), untrained first, in iteration order.
    """
    if target is None and not (untrained and out_dir is not None):
        raise ValueError('Nothing to score: give a target (work dir or checkpoint), or --untrained with --out.')
    cfg = load_config(config, cfg_options)
    samples, collate, settings = caption_pairs_from_config(cfg, data=data, image_folder=image_folder,
                                                           num_pairs=num_pairs, seed=seed)
    evaluator = AScoreEvaluator(samples, collate, batch_size=batch_size, settings=settings)
    target_path = Path(target) if target is not None else None
    kind = discover_checkpoints(target_path, check_complete=False)[0].kind if target_path is not None else 'pth'
    out = Path(out_dir) if out_dir is not None else default_out_dir(target_path, kind, evaluator.name)
    model_settings = dict(config=str(Path(config).resolve()), config_sha256=config_sha256(config),
                          cfg_options={k: repr(v) for k, v in sorted((cfg_options or {}).items())})
    built: list[Any] = []

    def build():
        if not built:
            built.append(model_factory() if model_factory is not None else build_model_from_config(cfg))
        return built[0]

    common = dict(out_dir=out, model_settings=model_settings, source=str(config), device=device,
                  overwrite=overwrite, progress=progress, plots=plots, console=console)
    records: list[dict[str, Any]] = []
    if untrained:
        records += evaluate_checkpoints(untrained_snapshot(out, build, model_settings), evaluator, build_model=build,
                                        **common)[evaluator.name]
    if target_path is not None and kind == 'hf':
        def load_checked():
            from ..models.hf_llava import load_hf_dir
            model = load_hf_dir(target_path)
            check_hf_dir_matches_pairs(model, cfg, samples, target_path)
            return model
        records += evaluate_checkpoints(target_path, evaluator, load_hf=load_checked, **common)[evaluator.name]
    elif target_path is not None:
        records += evaluate_checkpoints(target_path, evaluator, build_model=build, **common)[evaluator.name]
    return records


def check_hf_dir_matches_pairs(model: Any, cfg: Any, samples: Sequence[dict[str, Any]], path: Any) -> None:
    """An HF directory is scored on pairs the *config* tokenised and processed: they must be its inputs too.

    Checked: the chat template the export recorded, the tokenizer's vocabulary (every token of the config's with
    the same id; the export may add its image token), and the shape of the image
    tensor its processor makes (fixed-size processors). Raises ValueError naming what differs and the fix.
    """
    from ..models.base import build_module

    fix = (f'pass the config {path} was exported from (tools/convert_to_hf.py records it in '
           'mllm_align_export.json), or --data / --cfg-options that make the config match')
    ds_cfg = cfg.train_dataloader.dataset
    template = ds_cfg.get('template')
    if getattr(model, 'template', None) and template and model.template != template:
        raise ValueError(f'{path} was exported with template {model.template!r}, the config tokenises the pairs '
                         f'with {template!r}: {fix}.')
    tokenizer = build_module(ds_cfg['tokenizer']) if ds_cfg.get('tokenizer') is not None else None
    if tokenizer is not None and getattr(model, 'tokenizer', None) is not None:
        theirs = model.tokenizer.get_vocab()  # an export may add tokens (its image token): a superset is fine
        differ = [tok for tok, i in tokenizer.get_vocab().items() if theirs.get(tok) != i]
        if differ:
            raise ValueError(f'The tokenizer of {path} has another vocabulary than the config\'s ({len(differ)} of '
                             f'its {len(tokenizer)} tokens differ, e.g. {differ[:3]}): {fix}.')
    pixels = samples[0].get('pixel_values')
    if hasattr(model, 'process_images') and pixels is not None and pixels.dim() == 4:
        from PIL import Image
        try:
            theirs = model.process_images([Image.new('RGB', (64, 64))])['pixel_values']
        except ValueError:
            return  # no processor saved with the directory: nothing to compare
        if theirs.dim() == 4 and tuple(theirs.shape[1:]) != tuple(pixels.shape[1:]):
            raise ValueError(f'The image processor of {path} makes {tuple(theirs.shape[1:])} images, the config\'s '
                             f'{tuple(pixels.shape[1:])}: {fix}.')


def evaluate_a_score_v1(target: tuple[str | os.PathLike, str | os.PathLike | None],
                        references: Sequence[tuple[str | os.PathLike, str | os.PathLike | None]], *,
                        data: str | os.PathLike | None = None, image_folder: str | os.PathLike | None = None,
                        num_images: int = 100, seed: int = 0, batch_size: int = 8,
                        device: str | None = None) -> float:
    """A_v1 of ``target`` = (config, checkpoint) against ``references`` [(config, checkpoint), …].

    Images: N drawn with ``seed`` from the target config's train data (or ``data`` / ``image_folder``); each
    model processes them with its own config's image processor and returns its projected tokens
    (``get_image_features``: encoder, projector, plug-in transforms).
    """
    import torch

    from ..metrics.alignment import a_score_v1

    if not references:
        raise ValueError('A score v1 needs at least one reference (config, checkpoint) (the paper: CLIP@224, @336).')
    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    ids: list[str] | None = None

    def tokens(config, checkpoint) -> list[torch.Tensor]:
        nonlocal ids
        cfg = load_config(config)
        samples, _, _ = caption_pairs_from_config(cfg, data=data, image_folder=image_folder, num_pairs=num_images,
                                                  seed=seed)
        these = [str(s.get('id')) for s in samples]
        if ids is not None and these != ids:
            raise ValueError(f'{config}: its data gives other images than the target\'s: pass --data and '
                             '--image-folder so every model sees the same images.')
        ids = these
        model = build_model_from_config(cfg, checkpoint).to(dev)
        out: list[torch.Tensor] = []
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                chunk = samples[start:start + batch_size]
                pixel_values = torch.cat([s['pixel_values'] for s in chunk]).to(dev)
                out += [f.float().cpu() for f in model.get_image_features(pixel_values)]
        return out

    target_tokens = tokens(*target)
    return a_score_v1(target_tokens, [tokens(*ref) for ref in references])
