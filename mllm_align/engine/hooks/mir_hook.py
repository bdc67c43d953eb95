"""Track the Modality Integration Rate (MIR) during training, with optional early stopping."""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

from mmengine.dist import broadcast_object_list, get_dist_info
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ...data.mir_probe import DEFAULT_TEXT_MAX_TOKENS, MIRProbe
from ...metrics.mir import SQRT_MODES
from ...models.hidden_states import TEXT_TOKENS, compute_model_mir, num_llm_layers, parse_layers

_STATE_KEY = 'mir_hook'  # message-hub runtime info: {'best': float, 'num_bad': int}


@HOOKS.register_module()
class MIRHook(Hook):
    """MIR of the model on a fixed small probe every ``interval`` iterations (and before training).

    MIR = log10 Σ_k D_k, the per-layer Fréchet distance between vision- and text-token hidden states
    (Huang et al., https://arxiv.org/abs/2410.07167; ``mllm_align/metrics/mir.py``); lower is better
    aligned. The probe (``mllm_align/data/mir_probe.py``) is drawn once, deterministically, so values
    at different iterations are comparable. Each evaluation runs the probe through the model twice
    (2·``eval_num`` forward passes, streaming, memory flat in ``eval_num``).

    Logged as the scalar ``mir`` (and ``mir/layer_<k>`` with ``log_per_layer``) through
    ``runner.visualizer.add_scalars`` at step = iterations completed, so LocalVisBackend
    (``vis_data/scalars.json``) and TensorboardVisBackend record it; also stored in the message hub
    as ``mir/mir`` and written to the log.

    Early stopping: with ``patience`` M, training stops (``runner.train_loop.stop_training = True``,
    logged) after M consecutive evaluations that do not lower the best MIR so far by more than
    ``min_delta``. The pre-training evaluation sets the first best value. The stop takes effect after
    the current iteration; mmengine's CheckpointHook saves only on its own interval, so make
    ``interval`` a multiple of the checkpoint interval to keep the last evaluated weights. The best
    value and the counter are kept in the message hub's runtime info (``mir_hook``), which mmengine
    saves in checkpoints, so ``--resume`` continues them (and skips the pre-training evaluation).

    The hook only observes: forward passes under ``torch.no_grad()`` through the model's public
    ``prepare_inputs``/``run_llm``; the train/eval mode is restored in a ``finally`` block; no model
    attribute is set. Under DDP/DeepSpeed, with ``compute_on='all'`` (default) every rank runs the
    same probe (no collective inside, so no deadlock; required under ZeRO-3, whose forward gathers
    parameters on every rank); with ``'rank0'`` only rank 0 computes (saves work under DDP/ZeRO-1/2).
    Either way rank 0's result is broadcast, so every rank takes the same stop decision.

    Args:
        interval: evaluate every ``interval`` training iterations.
        images: probe images, a folder or a LLaVA JSON (default: the config's train dataset
            ``data_path``, with its ``image_folder``).
        image_folder: root of the JSON's relative image paths.
        texts: probe texts, a folder of ``.txt``/``.story`` files or a JSONL (default ``data/mir_texts``).
        eval_num: N pairs (20 by default: MIR is stable for N >= 20, per the paper).
        layers: ``'all'`` (LLM layers 1..K) or a spec such as ``'1-16'`` / a list.
        sqrt: ``'exact'`` (default), ``'seed-sqrtm'`` or ``'seed-fast'``.
        text_tokens: which positions count as text (``'after_image'``, ``'text'``, ``'all'``).
        placement: the probe text as the assistant ``'reply'`` (seed) or in the ``'user'`` turn.
        text_max_tokens: per-text token cap (0: none).
        seed: pairing permutation seed (None: sorted order).
        image_processor: the vision tower's image processor or its config dict (default: from the
            config, see ``image_processor_from_config``).
        evaluate_before_train: also evaluate once before the first iteration.
        log_per_layer: also log ``mir/layer_<k>`` = D_k.
        patience: stop after this many evaluations without improvement (None: never stop).
        min_delta: the improvement in MIR that resets the patience counter.
        compute_on: ``'all'`` ranks or ``'rank0'`` only (see above).
        batch_size: pairs per forward pass.
    """

    priority = 'LOW'  # after the logger (BELOW_NORMAL), before the checkpoint hook (VERY_LOW)

    def __init__(self, interval: int = 500, images: str | None = None, image_folder: str | None = None,
                 texts: str | None = None, eval_num: int = 20, layers: str | Sequence[int] | None = 'all',
                 sqrt: str = 'exact', text_tokens: str = 'after_image', placement: str = 'reply',
                 text_max_tokens: int | None = DEFAULT_TEXT_MAX_TOKENS, seed: int | None = 0,
                 image_processor: Any = None, evaluate_before_train: bool = True, log_per_layer: bool = False,
                 patience: int | None = None, min_delta: float = 0.0,
                 compute_on: Literal['all', 'rank0'] = 'all', batch_size: int = 1) -> None:
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f'MIRHook: interval must be a positive int, got {interval!r}.')
        if sqrt not in SQRT_MODES:
            raise ValueError(f'MIRHook: sqrt={sqrt!r}; use one of {SQRT_MODES}.')
        if text_tokens not in TEXT_TOKENS:
            raise ValueError(f'MIRHook: text_tokens={text_tokens!r}; use one of {TEXT_TOKENS}.')
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f'MIRHook: patience must be None or a positive int, got {patience!r}.')
        if min_delta < 0:
            raise ValueError(f'MIRHook: min_delta must be >= 0, got {min_delta}.')
        if compute_on not in ('all', 'rank0'):
            raise ValueError(f"MIRHook: compute_on={compute_on!r}; use 'all' or 'rank0'.")
        self.interval = interval
        self.images = images
        self.image_folder = image_folder
        self.texts = texts
        self.eval_num = eval_num
        self.layers = layers
        self.sqrt = sqrt
        self.text_tokens = text_tokens
        self.placement = placement
        self.text_max_tokens = text_max_tokens
        self.seed = seed
        self.image_processor = image_processor
        self.evaluate_before_train = evaluate_before_train
        self.log_per_layer = log_per_layer
        self.patience = patience
        self.min_delta = min_delta
        self.compute_on = compute_on
        self.batch_size = batch_size
        self.probe: MIRProbe | None = None
        self.layer_ids: list[int] = []
        self.best: float = math.inf
        self.num_bad = 0
        self.history: list[tuple[int, float]] = []

    # ------------------------------------------------------------------ setup
    def _build_probe(self, runner: Any) -> MIRProbe:
        from ...data.mir_probe import build_mir_probe
        from ...models.base import build_module
        from ..build import default_probe_sources, image_processor_from_config
        cfg = getattr(runner, 'cfg', None)
        images, image_folder = self.images, self.image_folder
        if images is None:
            if cfg is None:
                raise ValueError('MIRHook: no `images` given and the runner has no config to take the train '
                                 'dataset from.')
            images, cfg_folder = default_probe_sources(cfg)
            image_folder = image_folder if image_folder is not None else cfg_folder
        if self.image_processor is not None:
            image_processor = build_module(self.image_processor)
        else:
            try:
                image_processor = image_processor_from_config(cfg) if cfg is not None else None
            except Exception:  # noqa: BLE001 - a config without the usual layout
                image_processor = None
            if image_processor is None:
                raise ValueError('MIRHook: no image processor found in the config (top-level `image_processor`, '
                                 "the train dataset's, or the vision tower directory); pass `image_processor=`.")
        return build_mir_probe(images, self.texts, image_folder=image_folder, eval_num=self.eval_num, seed=self.seed,
                               image_processor=image_processor, placement=self.placement,  # type: ignore[arg-type]
                               text_max_tokens=self.text_max_tokens)

    @staticmethod
    def _model(runner: Any) -> Any:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train(self, runner: Any) -> None:
        self.probe = self._build_probe(runner)
        model = self._model(runner)
        self.layer_ids = parse_layers(self.layers, num_llm_layers(model))  # fail early on a bad spec
        runner.logger.info(f'MIRHook: {len(self.probe)} pairs, layers {self.layer_ids[0]}..{self.layer_ids[-1]} '
                           f'({len(self.layer_ids)}), sqrt={self.sqrt}, every {self.interval} iterations'
                           + (f', early stop after {self.patience} evaluations without a {self.min_delta} drop'
                              if self.patience else ''))
        state = runner.message_hub.get_info(_STATE_KEY)
        if isinstance(state, dict):  # resumed: continue the early-stopping state of the checkpoint
            self.best, self.num_bad = float(state['best']), int(state['num_bad'])
            runner.logger.info(f'MIRHook: resumed with best MIR {self.best:.4f}, {self.num_bad} evaluations '
                               'without improvement')
        elif self.evaluate_before_train:
            self._evaluate(runner, step=runner.iter)

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if self.every_n_train_iters(runner, self.interval):
            self._evaluate(runner, step=runner.iter + 1)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, runner: Any, step: int) -> None:
        if self.probe is None:
            self.probe = self._build_probe(runner)
            self.layer_ids = parse_layers(self.layers, num_llm_layers(self._model(runner)))
        rank, world_size = get_dist_info()
        payload = None
        if self.compute_on == 'all' or rank == 0:
            result = compute_model_mir(
                self._model(runner), self.probe, self.layer_ids, self.sqrt,  # type: ignore[arg-type]
                text_tokens=self.text_tokens, batch_size=self.batch_size)  # type: ignore[arg-type]
            payload = dict(mir=result.mir, per_layer=result.per_layer)
        if world_size > 1:
            box = [payload if rank == 0 else None]
            broadcast_object_list(box, src=0)
            payload = box[0]
        if payload is None:  # only if rank 0 did not compute, which compute_on excludes
            raise RuntimeError('MIRHook: no MIR result reached this rank.')
        mir = float(payload['mir'])
        self.history.append((step, mir))

        scalars = {'mir': mir}
        if self.log_per_layer:
            scalars.update({f'mir/layer_{k}': float(d) for k, d in zip(self.layer_ids, payload['per_layer'])})
        runner.visualizer.add_scalars(scalars, step=step)
        runner.message_hub.update_scalar('mir/mir', mir)
        improved = math.isfinite(mir) and mir < self.best - self.min_delta
        if improved:
            self.best, self.num_bad = mir, 0
        else:
            self.num_bad += 1
        runner.message_hub.update_info(_STATE_KEY, dict(best=self.best, num_bad=self.num_bad))
        runner.logger.info(f'MIR at iteration {step}: {mir:.4f} (best {self.best:.4f}'
                           + (f', {self.num_bad}/{self.patience} without improvement' if self.patience else '') + ')')
        if self.patience is not None and self.num_bad >= self.patience:
            runner.train_loop.stop_training = True
            runner.logger.warning(f'MIRHook: early stop at iteration {step}: MIR has not dropped by more than '
                                  f'{self.min_delta} for {self.num_bad} evaluations (best {self.best:.4f}).')
