"""``tools/eval_mir.py``'s config layer: read the training config, build the probe and the base model's
builder, and hand them to the evaluation runner (``mllm_align/evaluation/``).

What :func:`evaluate_mir` does::

    config ──► probe images (train dataset), image processor, base-model builder, config hash
    target ──► mllm_align.evaluation.evaluate_checkpoints(target, MIREvaluator(probe, …), build_model=…)
               (base built once, trained weights swapped per checkpoint, already-scored ones skipped,
               mir.json / mir.csv / mir_curve.png / mir_layers.png written atomically)

Defaults for the probe (see ``mllm_align/data/mir_probe.py``): images = the config's train dataset
(``data_path`` + ``image_folder``, the distinct images of the training JSON); texts = the committed
``data/mir_texts`` paragraphs. The seed's setting is 100 TextVQA images with CNN/DM stories:
pass ``--images``/``--texts`` for numbers comparable with the paper.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ..data.mir_probe import DEFAULT_TEXT_MAX_TOKENS, build_mir_probe
from ..evaluation.checkpoints import CheckpointRef, discover_checkpoints, untrained_snapshot
from ..evaluation.mir import MIR_RESULTS_FORMAT, MIREvaluator, check_mir_settings
from ..evaluation.runner import SettingsMismatch, default_out_dir, evaluate_checkpoints
from .build import (
    build_model_from_config,
    config_sha256,
    default_probe_sources,
    image_processor_from_config,
    load_config,
)

__all__ = ['CheckpointRef', 'MIRSettingsMismatch', 'RESULTS_FORMAT', 'default_probe_sources', 'discover_checkpoints',
           'evaluate_mir']

RESULTS_FORMAT = MIR_RESULTS_FORMAT
#: ``mir.json`` exists with other settings (the runner's :class:`SettingsMismatch`).
MIRSettingsMismatch = SettingsMismatch


def evaluate_mir(target: str | os.PathLike, config: str | os.PathLike | None = None, *,
                 out_dir: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
                 image_folder: str | os.PathLike | None = None, texts: str | os.PathLike | None = None,
                 eval_num: int = 100, sqrt: str = 'exact', layers: str | None = 'all', device: str | None = None,
                 dtype: str | None = None, text_tokens: str = 'after_image', placement: str = 'reply',
                 text_max_tokens: int | None = DEFAULT_TEXT_MAX_TOKENS, seed: int | None = 0, batch_size: int = 1,
                 skip_bad_images: bool = False, template: str | None = None, overwrite: bool = False,
                 progress: bool = True, plots: bool = True, console: Any = None,
                 model_factory: Callable[[], Any] | None = None, untrained: bool = False,
                 cfg_options: dict[str, Any] | None = None, replay_mb: float = 1024) -> list[dict[str, Any]]:
    """Score every checkpoint of ``target`` with MIR; write ``mir.json``, ``mir.csv`` and two PNGs.

    Args:
        target: a work dir of ``iter_*.pth`` (files or DeepSpeed directories), one checkpoint, or an HF
            model directory with a registered loader (Llava exports; ``register_hf_dir_loader``).
        config: the mllm_align config the checkpoints were trained with (required for ``.pth``;
            optional for an HF directory, where it only supplies probe defaults).
        out_dir: results folder (default: ``<work dir>/mir``, or ``<hf dir>_mir``).
        images, image_folder: probe images (default: the config's train dataset).
        texts: probe texts (default: ``data/mir_texts``).
        eval_num: N pairs (warns and uses fewer if fewer are available).
        sqrt: ``'exact'`` | ``'seed-sqrtm'`` | ``'seed-fast'``.
        layers: ``'all'`` (1..K) or a spec like ``'1-16'``, ``'1,3,5'`` (HF hidden-state indices).
        device: e.g. ``'cuda'``; default CUDA if available, else CPU.
        dtype: cast the model to ``float32`` / ``bfloat16`` / ``float16`` (default: as the config builds it).
        text_tokens, placement, text_max_tokens, seed, skip_bad_images: probe and extraction options
            (``mllm_align/data/mir_probe.py``, ``mllm_align/models/hidden_states.py``).
        batch_size: pairs per forward pass.
        template: chat template for an HF directory (default: from its export info).
        overwrite: discard results computed with other settings instead of raising.
        progress: show a tqdm bar per checkpoint.
        plots: write the PNGs.
        console: a rich ``Console`` for the tables (default: a new one on stdout).
        model_factory: builds the base model instead of the config (tests).
        untrained: also score the config's model as built, before any training (its projector at its seeded
            random init), as iteration 0 (``<out>/untrained/iter_0.pth``, saved once per config).
        cfg_options: ``--cfg-options`` for the config (as ``tools/train.py`` takes them); part of the fingerprint.
        replay_mb: MIR reads every row twice (its outlier rule needs all row norms first); the first pass's hidden
            states, up to this many MiB on the model's device, are kept and read again instead of running the
            model a second time. 0: always run it twice. Not part of the fingerprint: the rows are the same.

    Returns:
        The records of every checkpoint of ``target`` (computed now or earlier), in iteration order
        (the untrained one first).

    Raises:
        MIRSettingsMismatch: ``mir.json`` exists with other settings (and not ``overwrite``).
        ValueError / FileNotFoundError: bad inputs, each naming the cause (see the tests).
    """
    from ..models.builders import load_image_processor, resolve_dtype

    check_mir_settings(sqrt, text_tokens)  # fail before discovery and the probe
    refs = discover_checkpoints(target, check_complete=False)
    kind = refs[0].kind
    if cfg_options and config is None:
        raise ValueError('--cfg-options needs --config.')
    cfg = load_config(config, cfg_options) if config is not None else None
    if cfg is None and kind == 'pth':
        raise ValueError('--config is required to score .pth checkpoints: the frozen base model is rebuilt from '
                         'it and only the trained weights come from the checkpoint.')
    torch_dtype = None if dtype in (None, 'auto') else resolve_dtype(dtype)
    if images is None:
        if cfg is None:
            raise ValueError('--images is required without --config (no train dataset to take images from).')
        images, cfg_folder = default_probe_sources(cfg)
        image_folder = image_folder if image_folder is not None else cfg_folder

    if kind == 'hf':
        image_processor = load_image_processor(str(target))
    else:
        image_processor = image_processor_from_config(cfg)
        if image_processor is None:
            raise ValueError(f'Config {config} has no image processor (top-level `image_processor`, the train '
                             'dataset\'s, or a preprocessor_config.json in the vision tower directory).')
    probe = build_mir_probe(images, texts, image_folder=image_folder, eval_num=eval_num, seed=seed,
                            skip_bad_images=skip_bad_images, image_processor=image_processor,
                            placement=placement, text_max_tokens=text_max_tokens)  # type: ignore[arg-type]
    evaluator = MIREvaluator(probe, layers=layers, sqrt=sqrt, text_tokens=text_tokens, batch_size=batch_size,
                             sources=dict(images=str(images),
                                          image_folder=None if image_folder is None else str(image_folder),
                                          eval_num=eval_num, seed=seed))
    if replay_mb < 0:
        raise ValueError(f'replay_mb must be >= 0 (MiB of first-pass hidden states kept), got {replay_mb}.')
    evaluator.replay_budget_bytes = int(replay_mb * (1 << 20))
    model_settings = dict(
        dtype=str(torch_dtype).replace('torch.', '') if torch_dtype else 'config',
        config=None if config is None else str(Path(config).resolve()),
        config_sha256=None if config is None else config_sha256(config), template=template,
        **({'cfg_options': {k: repr(v) for k, v in sorted(cfg_options.items())}} if cfg_options else {}))
    if untrained and kind != 'pth':
        raise ValueError('--untrained scores a config\'s model before training; give the work dir of .pth '
                         'checkpoints and its --config (an HF directory has no untrained state).')
    built: list[Any] = []

    def build() -> Any:  # once, for the untrained snapshot and the series
        if not built:
            built.append(model_factory() if model_factory is not None else build_model_from_config(cfg))
        return built[0]

    common = dict(build_model=build, model_settings=model_settings, source=str(config), template=template,
                  dtype=torch_dtype, device=device, overwrite=overwrite, progress=progress, plots=plots,
                  console=console)
    records: list[dict[str, Any]] = []
    if untrained:
        import torch
        out = Path(out_dir) if out_dir is not None else default_out_dir(target, kind, evaluator.name)
        out_dir = out

        def build_seeded() -> Any:  # the init is drawn from the RNG: seed it, so the point is reproducible
            torch.manual_seed(0 if seed is None else seed)
            built.clear()
            return build()

        records += evaluate_checkpoints(untrained_snapshot(out, build_seeded, model_settings), evaluator,
                                        out_dir=out, **common)[evaluator.name]
    records += evaluate_checkpoints(target, evaluator, out_dir=out_dir, **common)[evaluator.name]
    return records
