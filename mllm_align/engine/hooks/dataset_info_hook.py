"""Log what the model will actually be trained on, before GPU time is spent."""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from mmengine.dist import all_reduce, get_world_size, is_distributed
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ...constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def _unwrap_dataset(dataset: Any) -> list[Any]:
    """The leaf datasets of a (possibly concatenated) dataset."""
    inner = getattr(dataset, 'datasets', None)
    if inner is None:
        return [dataset]
    return [leaf for d in inner for leaf in _unwrap_dataset(d)]


def decode_sample(input_ids: list[int], labels: list[int], tokenizer: Any) -> tuple[str, str]:
    """``(full text, supervised text)`` of one tokenized sample; images shown as ``<image>``.

    In the supervised text, runs of ignored positions are shown as ``[…]``.
    """
    def _decode(ids: list[int]) -> str:
        out, run = [], []
        for i in ids:
            if i == IMAGE_TOKEN_INDEX:
                out.append(tokenizer.decode(run)), out.append('<image>')
                run = []
            else:
                run.append(i)
        out.append(tokenizer.decode(run))
        return ''.join(out)

    full = _decode(input_ids)
    pieces, run, in_target = [], [], False
    for tok, lab in zip(input_ids, labels):
        supervised = lab != IGNORE_INDEX
        if supervised != in_target and run:
            pieces.append(tokenizer.decode(run) if in_target else '[…]')
            run = []
        in_target = supervised
        run.append(tok)
    if run:
        pieces.append(tokenizer.decode(run) if in_target else '[…]')
    return full, ''.join(pieces)


@HOOKS.register_module()
class DatasetInfoHook(Hook):
    """Before training, log each training dataset's size and its first sample decoded with its
    label mask (what is supervised); during and after training, log how many bad samples were
    skipped (``on_bad_sample='skip'``), per cause, summed over DataLoader workers and ranks.

    Skips are read from ``data['skipped']`` of each batch (see ``llava_collate_fn``), so counts
    made inside worker processes are not lost.

    Args:
        tokenizer: the tokenizer (or its config dict); default: the dataset's ``tokenizer``.
        sample_index: which sample to show.
    """

    priority = 'LOWEST'

    def __init__(self, tokenizer: Any = None, sample_index: int = 0) -> None:
        from ...models.llava import build_module
        self.tokenizer = build_module(tokenizer)
        self.sample_index = sample_index
        self.skipped: Counter[str] = Counter()

    def before_train(self, runner: Any) -> None:
        dataset = runner.train_dataloader.dataset
        runner.logger.info(f'Training dataset: {len(dataset):,} samples')
        for leaf in _unwrap_dataset(dataset):
            tokenizer = self.tokenizer or getattr(leaf, 'tokenizer', None)
            name = getattr(leaf, 'data_path', type(leaf).__name__)
            if tokenizer is None or len(leaf) == 0:
                runner.logger.info(f'  {name}: {len(leaf):,} samples')
                continue
            item = leaf[self.sample_index % len(leaf)]
            ids, labels = item['input_ids'].tolist(), item['labels'].tolist()
            full, target = decode_sample(ids, labels, tokenizer)
            n_img = 0 if item.get('pixel_values') is None else item['pixel_values'].shape[0]
            runner.logger.info(
                f'  {name}: {len(leaf):,} samples. Sample {item.get("id")!r} ({len(ids)} tokens, '
                f'{n_img} image(s)):\n    input:      {full!r}\n    supervised: {target!r}')

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        skipped = (data_batch or {}).get('data', {}).get('skipped') if isinstance(data_batch, dict) else None
        if not skipped:
            return
        first = not self.skipped
        self.skipped.update(skipped)
        if first:
            runner.logger.warning(f'Bad training samples are being skipped ({dict(skipped)}); totals are '
                                  'logged at the end of training.')

    def after_train(self, runner: Any) -> None:
        from ...data.llava_dataset import BAD_SAMPLE_CAUSES
        causes = sorted(set(BAD_SAMPLE_CAUSES) | set(self.skipped))
        counts = torch.tensor([self.skipped.get(c, 0) for c in causes], dtype=torch.long)
        if is_distributed() and get_world_size() > 1:
            all_reduce(counts)  # sum over ranks
        total = int(counts.sum())
        if total:
            detail = {c: int(n) for c, n in zip(causes, counts) if n}
            runner.logger.warning(f'{total} bad training samples were skipped and replaced by the next '
                                  f'sample: {detail}.')
