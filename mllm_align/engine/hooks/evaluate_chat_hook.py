"""Generate answers for fixed local images and questions during training, to watch learning."""
from __future__ import annotations

import json
import os.path as osp
from typing import Any, Sequence

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ...constants import DEFAULT_IMAGE_TOKEN
from ...data.image_loading import load_image
from ...data.image_processing import process_image_inputs
from ...data.templates import build_generation_prompt


@HOOKS.register_module()
class EvaluateChatHook(Hook):
    """Greedy answers for ``(image, question)`` pairs before training, every ``every_n_iters``
    iterations and after training; logged and appended to ``work_dir/chat_samples.jsonl``.

    The hook only observes: it calls the model's public ``predict`` under ``torch.no_grad()`` and
    restores train mode in a ``finally`` block.

    Args:
        image_processor: the base's image processor (or its config dict): fixed-size (CLIP, SigLIP) or
            patch-grid (Qwen2-VL).
        evaluation_images: local image paths, one per question (or one for all).
        evaluation_inputs: the questions.
        every_n_iters: how often to generate.
        system: system prompt (default: the template's).
        pad_image_to_square: pad like the training data (LLaVA-1.5 ``pad`` mode).
    """

    priority = 'LOW'

    def __init__(self, image_processor: Any, evaluation_images: Sequence[str],
                 evaluation_inputs: Sequence[str], every_n_iters: int = 500,
                 system: str | None = None, pad_image_to_square: bool = True) -> None:
        from ...models.base import build_module
        if len(evaluation_images) not in (1, len(evaluation_inputs)):
            raise ValueError(f'EvaluateChatHook: {len(evaluation_images)} images for '
                             f'{len(evaluation_inputs)} questions; give one image per question or one for all.')
        for path in evaluation_images:
            if not osp.isfile(path):
                raise FileNotFoundError(f'EvaluateChatHook: evaluation image {path!r} does not exist '
                                        '(set evaluation_images in PART 1 of the config to local files).')
        self.image_processor = build_module(image_processor)
        self.images = list(evaluation_images) * (len(evaluation_inputs) if len(evaluation_images) == 1 else 1)
        self.inputs = list(evaluation_inputs)
        self.every_n_iters = every_n_iters
        self.system = system
        self.pad_image_to_square = pad_image_to_square

    def _generate(self, runner: Any, tag: str) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if model.tokenizer is None or model.template is None:
            raise ValueError('EvaluateChatHook needs the model to have `tokenizer` and `template` set.')
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        records = []
        try:
            with torch.no_grad():
                for path, question in zip(self.images, self.inputs):
                    conv = [{'from': 'human', 'value': f'{DEFAULT_IMAGE_TOKEN}\n{question}'}]
                    ids = build_generation_prompt(conv, model.tokenizer, model.template, system=self.system)
                    # pixel_values (and Qwen2-VL's image_grid_thw): fixed-size and patch-grid processors alike
                    images = process_image_inputs([load_image(path)], self.image_processor,
                                                  self.pad_image_to_square)
                    data = dict(input_ids=torch.tensor([ids], device=device),
                                attention_mask=torch.ones(1, len(ids), dtype=torch.bool, device=device),
                                **{k: v.to(device) for k, v in images.items()})
                    answer = model.predict(data)[0]['prediction']
                    records.append(dict(iter=runner.iter, tag=tag, image=path, question=question, answer=answer))
        finally:
            model.train(was_training)
        lines = '\n'.join(f'  [{osp.basename(r["image"])}] {r["question"]!r} → {r["answer"]!r}' for r in records)
        runner.logger.info(f'Chat samples ({tag}, iter {runner.iter}):\n{lines}')
        if runner.rank == 0:
            with open(osp.join(runner.work_dir, 'chat_samples.jsonl'), 'a', encoding='utf-8') as f:
                for r in records:
                    f.write(json.dumps(r, ensure_ascii=False) + '\n')

    def before_train(self, runner: Any) -> None:
        self._generate(runner, 'before_train')

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if self.every_n_train_iters(runner, self.every_n_iters) and not self.is_last_train_iter(runner):
            self._generate(runner, 'train')

    def after_train(self, runner: Any) -> None:
        self._generate(runner, 'after_train')
