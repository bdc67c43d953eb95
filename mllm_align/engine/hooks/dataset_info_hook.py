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
    """Before training, log each training dataset's size, its bad-sample policy and image limit,
    its duplicate ids (with examples) and its first sample decoded with its label mask (what is
    supervised); during and after training, log how many bad samples were skipped
    (``on_bad_sample='skip'``) and how many were truncated to ``max_length``, per cause, summed
    over DataLoader workers and ranks.

    Skips and notices are read from ``data['skipped']`` / ``data['notices']`` of each batch (see
    ``llava_collate_fn``), so counts made inside worker processes are not lost. The totals are
    logged at the end of training, and every ``interval`` iterations while they change.

    Args:
        tokenizer: the tokenizer (or its config dict); default: the dataset's ``tokenizer``.
        sample_index: which sample to show.
        interval: log the running totals every this many iterations when they changed
            (0: only at the end of training).
    """

    priority = 'LOWEST'

    def __init__(self, tokenizer: Any = None, sample_index: int = 0, interval: int = 1000) -> None:
        from ...models.base import build_module
        if not isinstance(interval, int) or interval < 0:
            raise ValueError(f'DatasetInfoHook interval must be an int >= 0, got {interval!r}.')
        self.tokenizer = build_module(tokenizer)
        self.sample_index = sample_index
        self.interval = interval
        self.skipped: Counter[str] = Counter()
        self.notices: Counter[str] = Counter()
        self._seen_items = 0
        self._changed = False

    def before_train(self, runner: Any) -> None:
        dataset = runner.train_dataloader.dataset
        runner.logger.info(f'Training dataset: {len(dataset):,} samples')
        for leaf in _unwrap_dataset(dataset):
            tokenizer = self.tokenizer or getattr(leaf, 'tokenizer', None)
            name = getattr(leaf, 'data_files', None) or getattr(leaf, 'data_path', type(leaf).__name__)
            if hasattr(leaf, 'on_bad_sample'):
                limit = getattr(leaf, 'max_image_pixels', None)
                runner.logger.info(
                    f'  {name}: on_bad_sample={leaf.on_bad_sample!r}, max_length={leaf.max_length}, '
                    f'max_image_pixels={"no limit" if limit is None else f"{limit:,}"}')
            duplicates = getattr(leaf, 'duplicate_ids', None)
            if duplicates is not None and duplicates.num_records:
                runner.logger.warning(f'  {name}: {duplicates.describe()}')
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
        data = data_batch.get('data', {}) if isinstance(data_batch, dict) else {}
        if not isinstance(data, dict):
            return
        ids = data.get('input_ids')
        self._seen_items += int(ids.shape[0]) if hasattr(ids, 'shape') else 0
        skipped, notices = data.get('skipped'), data.get('notices')
        if skipped:
            if not self.skipped:
                runner.logger.warning(
                    f'Bad training samples are being skipped and replaced by the next sample '
                    f'({dict(skipped)}); the first of each cause was logged above with its file, '
                    'line and fix. Totals per cause follow '
                    + (f'every {self.interval} iterations and ' if self.interval else '')
                    + 'at the end of training.')
            self.skipped.update(skipped)
            self._changed = True
        if notices:
            self.notices.update(notices)
            self._changed = True
        if self._changed and self.interval and self.every_n_train_iters(runner, self.interval):
            self._log_totals(runner, reduce=False)

    def after_train(self, runner: Any) -> None:
        self._log_totals(runner, reduce=True)

    def _log_totals(self, runner: Any, reduce: bool) -> None:
        """Log skip and notice counts; ``reduce``: sum over ranks first (a collective: every
        rank must call it, as ``after_train`` does; mid-run totals are this rank's)."""
        from ...data.llava_dataset import BAD_SAMPLE_CAUSES, SAMPLE_NOTICES
        self._changed = False
        causes = sorted(set(BAD_SAMPLE_CAUSES) | set(self.skipped))
        kinds = sorted(set(SAMPLE_NOTICES) | set(self.notices))
        counts = torch.tensor([self.skipped.get(c, 0) for c in causes]
                              + [self.notices.get(k, 0) for k in kinds] + [self._seen_items],
                              dtype=torch.long)
        where = 'in all ranks' if reduce and is_distributed() and get_world_size() > 1 else 'on this rank'
        if reduce and is_distributed() and get_world_size() > 1:
            all_reduce(counts)  # sum over ranks
        skip_counts, notice_counts = counts[:len(causes)], counts[len(causes):-1]
        seen = int(counts[-1])
        total = int(skip_counts.sum())
        if total:
            detail = {c: int(n) for c, n in zip(causes, skip_counts) if n}
            runner.logger.warning(f'{total} bad training samples were skipped {where} and replaced by the '
                                  f'next sample: {detail}. Fix or remove them (the first of each cause '
                                  "was logged with its location), or load the data with "
                                  "on_bad_sample='raise' to stop at each one.")
        truncated = int(notice_counts[kinds.index('truncated')]) if 'truncated' in kinds else 0
        if truncated:
            share = f' ({100 * truncated / seen:.1f} % of {seen:,} training items)' if seen else ''
            runner.logger.warning(f'{truncated:,} training samples were truncated to max_length {where}'
                                  f'{share}; {SAMPLE_NOTICES["truncated"]}.')
