"""The config layer of ``tools/eval_vqa.py`` and ``tools/chat.py``: a model source (config + checkpoint, or an
HF directory) → a built model with the image processing training used; VQA accuracy of a run → the runner.

What :func:`load_model_source` does::

    CONFIG.py [+ iter_N.pth] ──► build_model_from_config (trained weights loaded strictly), the config's image
                                 processor and pad_image_to_square (engine/build.py)
    HF_DIR                   ──► load_hf_dir (its registered loader; the export's processor pads as training did)

What :func:`evaluate_vqa` does::

    data ──► VQAEvaluator (questions checked first: images, answers; mllm_align/evaluation/vqa.py)
    target ──► work dir (all | --checkpoint iter_N.pth | --latest), one checkpoint, or an HF directory
    --untrained ──► the config's model as built (no checkpoint) saved once as <out>/untrained/iter_0.pth
                    (its trainable weights, iteration 0; saved again when the config or dtype changes) and
                    scored like any checkpoint
    ──► mllm_align.evaluation.evaluate_checkpoints (model built once, weights swapped, scored ones skipped,
        vqa.json / vqa.csv / vqa_curve.png) ──► <out>/predictions/<name>.jsonl, <out>/answers/<name>.png
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..evaluation.checkpoints import UNTRAINED_NAME, discover_checkpoints, save_untrained_checkpoint, untrained_snapshot
from ..evaluation.runner import default_out_dir, evaluate_checkpoints
from ..evaluation.vqa import VQAEvaluator, load_question_answers
from ..models.hf_llava import hf_dir_model_type, load_hf_dir
from .build import (
    build_model_from_config,
    config_sha256,
    export_settings_from_config,
    image_processor_from_config,
    load_config,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..models.base import MultimodalModel

# (UNTRAINED_NAME and save_untrained_checkpoint are re-exported from mllm_align.evaluation)
__all__ = ['GenerationSeries', 'ModelSource', 'UNTRAINED_NAME', 'evaluate_vqa', 'load_model_source',
           'resolve_dtype_arg', 'resolve_vqa_target', 'save_untrained_checkpoint']

#: Sub-folder of the output folder that holds the untrained model's snapshot (``iter_0.pth``).


@dataclass
class ModelSource:
    """A built model and how to feed it images.

    Attributes:
        model: the model, in eval mode on its device.
        image_processor: the training image processor (None: ``model.process_images``, an HF export's).
        pad_to_square: pad images to a square before ``image_processor`` (the config's ``pad_image_to_square``).
        description: what was loaded (printed first by the tools).
    """

    model: 'MultimodalModel'
    image_processor: Any
    pad_to_square: bool
    description: str


def resolve_dtype_arg(dtype: str | None) -> torch.dtype | None:
    """``None``/``'auto'`` → None (as built / saved), else the torch dtype (``'bfloat16'``, …)."""
    from ..models.builders import resolve_dtype
    return None if dtype in (None, 'auto') else resolve_dtype(dtype)  # type: ignore[return-value]


def _default_device(device: str | None) -> str:
    return device or ('cuda' if torch.cuda.is_available() else 'cpu')


def load_model_source(source: str | os.PathLike, checkpoint: str | os.PathLike | None = None, *,
                      template: str | None = None, device: str | None = None,
                      dtype: str | None = None) -> ModelSource:
    """Build the model ``source`` names, with its image processing.

    Args:
        source: an mllm_align config (``.py``) or an HF model directory (a ``tools/convert_to_hf.py`` export).
        checkpoint: an ``iter_N.pth`` (file or DeepSpeed directory) of the config's run, loaded strictly;
            None: the model as the config builds it (its ``pretrained_pth``, if any). Not for HF directories.
        template: the chat template of an HF directory (default: the one its export recorded).
        device: default CUDA if available, else CPU.
        dtype: ``'auto'`` (as built / saved), ``'float32'``, ``'bfloat16'``, ``'float16'``.

    Raises:
        FileNotFoundError: ``source`` or ``checkpoint`` does not exist.
        ValueError: a source that is neither a config nor an HF directory, a checkpoint with an HF directory,
            a config without an image processor, a checkpoint that does not match the config's model.
    """
    path = Path(source)
    device = _default_device(device)
    torch_dtype = resolve_dtype_arg(dtype)
    if not path.exists():
        raise FileNotFoundError(f'{str(path)!r} does not exist: give a config (.py) [+ checkpoint] or an HF model '
                                'directory.')
    if path.is_dir():
        if hf_dir_model_type(path) is None:
            raise ValueError(f'{path} is a directory without config.json: give a config (.py) [+ checkpoint] or an '
                             'HF model directory written by tools/convert_to_hf.py.')
        if checkpoint is not None:
            raise ValueError(f'{path} is an HF model directory, which holds its weights: drop the checkpoint '
                             f'{str(checkpoint)!r} (or give the config it was trained with instead).')
        model = load_hf_dir(path, template=template, dtype=torch_dtype, device=device).eval()
        return ModelSource(model, None, False, f'HF directory {path} ({type(model).__name__}, template '
                                               f'{model.template!r}, {device})')
    if path.suffix != '.py':
        raise ValueError(f'{path} is neither a config (.py) nor an HF model directory.')
    if checkpoint is not None and not Path(checkpoint).exists():
        raise FileNotFoundError(f'Checkpoint {str(checkpoint)!r} does not exist.')
    cfg = load_config(path)
    image_processor = image_processor_from_config(cfg)
    if image_processor is None:
        raise ValueError(f'Config {path} has no image processor (a top-level `image_processor`, the train dataset\'s, '
                         'or a preprocessor_config.json in the vision tower directory).')
    pad = export_settings_from_config(cfg)['pad_image_to_square']
    try:
        model = build_model_from_config(cfg, checkpoint)
    except RuntimeError as exc:  # strict key mismatch
        raise ValueError(f'{exc} Pass the config the checkpoint was trained with.') from exc
    if torch_dtype is not None:
        model.to(torch_dtype)
    model.to(device).eval()
    what = f'checkpoint {checkpoint}' if checkpoint is not None else 'no checkpoint (the model as the config builds it)'
    return ModelSource(model, image_processor, pad, f'config {path} + {what} ({type(model).__name__}, template '
                                                    f'{model.template!r}, {device})')


def resolve_vqa_target(target: str | os.PathLike, checkpoint: str | None = None, latest: bool = False) -> Path:
    """What to score: ``target`` itself, ``target/<checkpoint>`` of a work dir, or its newest checkpoint.

    Raises:
        ValueError: ``checkpoint``/``latest`` with a target that is not a work dir, both given, or a checkpoint
            name the work dir does not hold (listing those it holds).
    """
    path = Path(target)
    selecting = latest or (checkpoint not in (None, 'all'))
    if not selecting:
        return path
    refs = discover_checkpoints(path, check_complete=False)
    if refs[0].kind != 'pth' or not path.is_dir() or len(refs) == 1 and refs[0].path == path:
        raise ValueError(f'--checkpoint / --latest pick from a work dir of iter_*.pth; {path} is not one (give the '
                         'checkpoint itself as the target).')
    if latest and checkpoint not in (None, 'all'):
        raise ValueError(f'Give --checkpoint {checkpoint} or --latest, not both.')
    if latest:
        return refs[-1].path
    chosen = path / str(checkpoint)
    names = [r.name for r in refs]
    if chosen.name not in names:
        raise ValueError(f'{path} holds no {checkpoint!r}; it holds {names}.')
    return chosen



@dataclass
class GenerationSeries:
    """What a generation benchmark (VQA, MMVM) scores, resolved: the config, the target and its kind, and the
    image processing of a ``.pth`` series (an HF directory brings its own). :meth:`run` scores it on the runner
    (the untrained model first, as iteration 0, when asked)."""

    cfg: Any
    config: str | os.PathLike | None
    target: Path | None
    kind: str
    untrained: bool
    image_processor: Any
    pad_to_square: bool
    cfg_options: dict[str, Any] | None

    @classmethod
    def prepare(cls, target: str | os.PathLike | None, config: str | os.PathLike | None, *,
                checkpoint: str | None = None, latest: bool = False, untrained: bool = False,
                out_dir: str | os.PathLike | None = None,
                cfg_options: dict[str, Any] | None = None) -> 'GenerationSeries':
        """Check and resolve the arguments (the errors name the fix)."""
        if target is None and not untrained:
            raise ValueError('Nothing to score: give a target (work dir, checkpoint, HF directory) or --untrained.')
        if cfg_options and config is None:
            raise ValueError('--cfg-options needs --config.')
        cfg = load_config(config, cfg_options) if config is not None else None
        target_path = resolve_vqa_target(target, checkpoint, latest) if target is not None else None
        kind = discover_checkpoints(target_path, check_complete=False)[0].kind if target_path is not None else 'pth'
        if cfg is None and (kind == 'pth' or untrained):
            raise ValueError('--config is required to score .pth checkpoints and the untrained model: the frozen '
                             'base is rebuilt from it and only the trained weights come from a checkpoint.')
        if kind == 'hf' and untrained:
            raise ValueError('--untrained scores a config\'s model; an HF directory has no untrained state.')
        if target_path is None and out_dir is None:
            raise ValueError('--out is required when only the untrained model is scored.')
        image_processor, pad = None, False
        if kind == 'pth':
            image_processor = image_processor_from_config(cfg)
            if image_processor is None:
                raise ValueError(f'Config {config} has no image processor (a top-level `image_processor`, the train '
                                 'dataset\'s, or a preprocessor_config.json in the vision tower directory).')
            pad = export_settings_from_config(cfg)['pad_image_to_square']
        return cls(cfg, config, target_path, kind, untrained, image_processor, pad, cfg_options)

    def run(self, evaluator: Any, *, out_dir: str | os.PathLike | None = None, device: str | None = None,
            dtype: str | None = None, template: str | None = None, overwrite: bool = False, progress: bool = True,
            plots: bool = True, console: Any = None,
            model_factory: Callable[[], 'MultimodalModel'] | None = None) -> tuple[list[dict[str, Any]], Path]:
        """Score the series with ``evaluator``; returns (records, results folder)."""
        out = Path(out_dir) if out_dir is not None else default_out_dir(self.target, self.kind, evaluator.name)
        torch_dtype = resolve_dtype_arg(dtype)
        config = self.config
        model_settings = dict(dtype=str(torch_dtype).replace('torch.', '') if torch_dtype else 'config',
                              config=None if config is None else str(Path(config).resolve()),
                              config_sha256=None if config is None else config_sha256(config), template=template,
                              cfg_options={k: repr(v) for k, v in sorted((self.cfg_options or {}).items())})
        built: list['MultimodalModel'] = []

        def build() -> 'MultimodalModel':  # once for the untrained snapshot and the series
            if not built:
                built.append(model_factory() if model_factory is not None else build_model_from_config(self.cfg))
            return built[0]

        common = dict(build_model=build, out_dir=out, model_settings=model_settings, source=str(config),
                      template=template, dtype=torch_dtype, device=device, overwrite=overwrite, progress=progress,
                      plots=plots, console=console)
        records: list[dict[str, Any]] = []
        if self.untrained:
            snapshot = untrained_snapshot(out, build, model_settings)  # rebuilt when the config or dtype changes
            records += evaluate_checkpoints(snapshot, evaluator, **common)[evaluator.name]
        if self.target is not None:
            records += evaluate_checkpoints(self.target, evaluator, **common)[evaluator.name]
        if self.untrained and self.target is not None:  # before and after training in one table
            from rich.console import Console
            (console or Console()).print(evaluator.summary_table(records))
        return records, out


def _output_name(record: dict[str, Any], out_dir: Path) -> str:
    ckpt = Path(record['checkpoint'])
    if ckpt.parent.resolve() == (out_dir / UNTRAINED_NAME).resolve():
        return UNTRAINED_NAME
    return ckpt.stem if ckpt.suffix == '.pth' else ckpt.name


def evaluate_vqa(target: str | os.PathLike | None, config: str | os.PathLike | None = None, *,
                 data: str | os.PathLike, image_folder: str | os.PathLike | None = None,
                 out_dir: str | os.PathLike | None = None, limit: int | None = None, checkpoint: str | None = None,
                 latest: bool = False, untrained: bool = False, batch_size: int = 8, max_new_tokens: int = 8,
                 match: str = 'first_word', baseline_data: str | os.PathLike | None = None, show: int = 0,
                 device: str | None = None, dtype: str | None = None, template: str | None = None,
                 overwrite: bool = False, progress: bool = True, plots: bool = True, console: Any = None,
                 model_factory: Callable[[], 'MultimodalModel'] | None = None,
                 cfg_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """VQA accuracy of every checkpoint of ``target`` (and of the untrained model); results in ``out_dir``.

    Args:
        target: a work dir of ``iter_*.pth``, one checkpoint, an HF model directory, or None with ``untrained``.
        config: the config the checkpoints were trained with (required for ``.pth`` and ``untrained``).
        data, image_folder, limit, batch_size, max_new_tokens, match: the questions and how they are answered
            and scored (:class:`~mllm_align.evaluation.vqa.VQAEvaluator`).
        out_dir: results folder (default ``<work dir>/vqa``, ``<hf dir>_vqa``; required when ``target`` is None).
        checkpoint: ``'all'`` (default) or one ``iter_N.pth`` name of the work dir; ``latest``: its newest only.
        untrained: also score the config's model with no checkpoint, as iteration 0.
        baseline_data: a LLaVA JSON whose answers give the majority answer (e.g. the training set;
            default: the evaluated answers).
        show: write ``answers/<name>.png`` with this many answered questions per scored record (0: none).
        device, dtype: where and in which precision to run (``'auto'``: as built / saved).
        template: chat template for an HF directory (default: the one its export recorded).
        overwrite: discard results computed with other settings instead of raising.
        progress, plots, console: the runner's (:func:`~mllm_align.evaluation.evaluate_checkpoints`).
        model_factory: builds the base model instead of the config (tests).
        cfg_options: ``--cfg-options`` for the config (``{dotted key or PART 1 name: value}``), e.g. the
            ``pretrained_pth`` the untrained SFT model starts from; part of the settings fingerprint.

    Returns:
        The records of this call's checkpoints (untrained first), each computed now or read back.

    Raises:
        SettingsMismatch: ``vqa.json`` exists with other settings (and not ``overwrite``).
        ValueError / FileNotFoundError: bad inputs, each naming the cause.
    """
    if show < 0:
        raise ValueError(f'--show must be >= 0, got {show}.')
    series = GenerationSeries.prepare(target, config, checkpoint=checkpoint, latest=latest, untrained=untrained,
                                      out_dir=out_dir, cfg_options=cfg_options)
    pairs = load_question_answers(baseline_data) if baseline_data is not None else None
    baseline = [a for _, a in pairs] if pairs is not None else None
    evaluator = VQAEvaluator(data, image_folder, image_processor=series.image_processor,
                             pad_to_square=series.pad_to_square, limit=limit, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, match=match,  # type: ignore[arg-type]
                             baseline_answers=baseline,
                             baseline_questions=None if pairs is None else [q for q, _ in pairs],
                             baseline_source=None if baseline_data is None else str(Path(baseline_data).resolve()))
    records, out = series.run(evaluator, out_dir=out_dir, device=device, dtype=dtype, template=template,
                              overwrite=overwrite, progress=progress, plots=plots, console=console,
                              model_factory=model_factory)
    for record in records:
        name = _output_name(record, out)
        evaluator.write_predictions(record, out / 'predictions' / f'{name}.jsonl')
        if show:
            evaluator.write_answer_grid(record, out / 'answers' / f'{name}.png', show)
    return records
