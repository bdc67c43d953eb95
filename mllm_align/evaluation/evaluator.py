"""The evaluator protocol of the checkpoint runner: mmengine's ``process`` / ``compute_metrics`` split.

An evaluator scores one model state. It mirrors :class:`mmengine.evaluator.BaseMetric`: ``process``
accumulates over batches into ``self.results``, ``compute_metrics(results)`` reduces them to a dict,
``evaluate()`` runs the reduction and clears the results. On top of that it declares what the runner
(:func:`~mllm_align.evaluation.runner.evaluate_checkpoints`) needs to score a series of checkpoints::

    name            'mir'  → results file mir.json, mir.csv, plots; the log key
    settings()      JSON-able dict: the fingerprint; a checkpoint is skipped when it was scored with the
                    same settings (and the runner's model settings)
    info()          extra top-level entries of the results file (e.g. the probe's pairs)
    prepare(model)  once, after the base model is built (check it fits: layer range, …)
    begin_checkpoint(name, out_dir, key)  before each checkpoint (where to keep per-sample work)
    num_passes      passes over the data per checkpoint (MIR: 2, its outlier rule needs all rows first); later
                    passes replay pass 0's outputs while they fit in ``replay_budget_bytes``, else re-run the model
    begin_pass(i)   before pass i (0-based)
    batches(model)  the data batches for this model (e.g. the probe encoded with its tokenizer)
    run_batch(model, batch) → outputs   one forward pass, under no_grad, model in eval mode
    process(batch, outputs)             accumulate
    compute_metrics(results) → dict     reduce: one record's metric fields (JSON-able)
    write_csv / plot / report           outputs (defaults: the scalar metrics per checkpoint)

A new evaluator (A score, C score, MMVM, …) subclasses :class:`ModelEvaluator` and fills in ``name``,
``settings``, ``batches``, ``run_batch``, ``process`` and ``compute_metrics``.
"""
from __future__ import annotations

import csv
import logging
import numbers
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Sequence

import torch
from mmengine.logging import print_log

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..models.base import MultimodalModel

__all__ = ['ModelEvaluator', 'scalar_metric_keys', 'sorted_records']


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in ``value`` (nested lists, tuples and dicts; anything else counts 0)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def sorted_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records in iteration order (records without an iteration last, by checkpoint path)."""
    return sorted(records, key=lambda r: (r.get('iteration') is None, r.get('iteration') or 0, r['checkpoint']))


_RUNNER_KEYS = ('iteration', 'checkpoint', 'checkpoint_key', 'seconds', 'device', 'finished_at')


def scalar_metric_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """Metric keys whose value is a number in every record (bools excluded), in first-record order."""
    if not records:
        return []
    keys = [k for k in records[0] if k not in _RUNNER_KEYS]
    return [k for k in keys
            if all(isinstance(r.get(k), numbers.Real) and not isinstance(r.get(k), bool) for r in records)]


class ModelEvaluator(ABC):
    """Base class of evaluators run by the checkpoint runner (module docstring for the protocol).

    Attributes:
        name: short identifier (file stem and log key), e.g. ``'mir'``.
        results_format: the ``format`` string of the results file (default ``mllm_align.eval.<name>/1``).
        num_passes: passes over :meth:`batches` per scored checkpoint.
        replay_budget_bytes: with ``num_passes > 1``, the most bytes of pass-0 outputs (their tensors, on the
            device they come from) kept to replay in the later passes instead of running the model again; past
            it they are dropped and every pass runs the model. 0: never keep. The outputs of a model in eval
            mode are the same each time, so replaying changes no number, it only saves the forward passes
            (``process`` must therefore leave its ``outputs`` unmodified, as MIR's accumulator does).
        results: what :meth:`process` accumulated since the last :meth:`evaluate`.
    """

    name: ClassVar[str] = ''
    results_format: ClassVar[str | None] = None
    num_passes: ClassVar[int] = 1
    replay_budget_bytes: int = 1 << 30

    def __init__(self) -> None:
        if not self.name or not self.name.replace('_', '').isalnum():
            raise ValueError(f'{type(self).__name__}.name must be a short identifier (e.g. "mir"), got '
                             f'{self.name!r}.')
        self.results: list[Any] = []

    @property
    def format(self) -> str:
        return self.results_format or f'mllm_align.eval.{self.name}/1'

    # ------------------------------------------------------------------ what is scored
    def settings(self) -> dict[str, Any]:
        """JSON-able settings that determine the numbers (the skip fingerprint). Default: none."""
        return {}

    def info(self) -> dict[str, Any]:
        """Extra JSON-able top-level entries of the results file (not part of the fingerprint)."""
        return {}

    def prepare(self, model: 'MultimodalModel') -> None:
        """Called once after the base model is built; raise ``ValueError`` if the evaluator cannot score it."""

    def num_samples(self) -> int | None:
        """Samples per pass (progress bar total), or None if unknown."""
        return None

    @abstractmethod
    def batches(self, model: 'MultimodalModel') -> Iterable[Any]:
        """The data batches of one pass, prepared for ``model``."""

    @abstractmethod
    def run_batch(self, model: 'MultimodalModel', data_batch: Any) -> Sequence[Any]:
        """The model's outputs for one batch (one entry per sample); called under ``torch.no_grad()``."""

    def begin_checkpoint(self, name: str, out_dir: Path, key: dict[str, Any]) -> None:
        """Called before a checkpoint is scored: its file name, the results folder and its identity (path,
        size, mtime). An evaluator that keeps partial work (per-sample predictions, so an interrupted run
        resumes) files it under these. Default: nothing."""

    def begin_pass(self, index: int) -> None:
        """Called before pass ``index`` (0-based) of one checkpoint; pass 0 starts from empty ``results``."""

    # ------------------------------------------------------------------ mmengine's split
    @abstractmethod
    def process(self, data_batch: Any, outputs: Sequence[Any]) -> None:
        """Accumulate one batch of outputs into ``self.results``."""

    @abstractmethod
    def compute_metrics(self, results: list) -> dict[str, Any]:
        """Reduce the processed results to one record's JSON-able metric fields."""

    def evaluate(self) -> dict[str, Any]:
        """``compute_metrics(self.results)``, then clear the results (mmengine's ``BaseMetric.evaluate``)."""
        if not self.results:
            print_log(f'{type(self).__name__} got empty `self.results`: its `process` must append to '
                      '`self.results` (did `batches` yield nothing?).', logger='current', level=logging.WARNING)
        try:
            return self.compute_metrics(self.results)
        finally:
            self.results = []

    def score(self, model: 'MultimodalModel', progress: Any = None) -> dict[str, Any]:
        """Run every pass over :meth:`batches` through ``model`` and return :meth:`evaluate`'s metrics.

        Passes after the first replay pass 0's ``(batch, outputs)`` when they fit in
        :attr:`replay_budget_bytes`, and run the model again otherwise. ``progress`` (e.g. tqdm) is advanced by
        the number of outputs of each batch.
        """
        self.results = []
        kept: list[tuple[Any, Sequence[Any]]] | None = [] if self.num_passes > 1 and self.replay_budget_bytes > 0 \
            else None
        kept_bytes = 0
        for index in range(self.num_passes):
            self.begin_pass(index)
            if progress is not None and self.num_passes > 1 and hasattr(progress, 'set_postfix_str'):
                progress.set_postfix_str(f'pass {index + 1}/{self.num_passes}')
            replay = index > 0 and kept is not None
            for batch, outputs in (self._replay(kept, last=index == self.num_passes - 1) if replay  # type: ignore
                                   else self._forward(model)):
                if index == 0 and kept is not None:
                    kept_bytes += tensor_bytes(outputs)
                    if kept_bytes <= self.replay_budget_bytes:
                        kept.append((batch, outputs))
                    else:  # too large to keep: the later passes run the model again
                        kept = None
                self.process(batch, outputs)
                if progress is not None:
                    progress.update(len(outputs))
        return self.evaluate()

    @staticmethod
    def _replay(kept: list[tuple[Any, Sequence[Any]]], last: bool) -> Iterable[tuple[Any, Sequence[Any]]]:
        """The kept ``(batch, outputs)`` in order; in the last pass each is released once it has been read."""
        if not last:
            yield from kept
            return
        kept.reverse()
        while kept:
            yield kept.pop()

    def _forward(self, model: 'MultimodalModel') -> Iterable[tuple[Any, Sequence[Any]]]:
        for batch in self.batches(model):
            with torch.no_grad():
                yield batch, self.run_batch(model, batch)

    # ------------------------------------------------------------------ outputs
    def write_csv(self, records: list[dict[str, Any]], path: str | os.PathLike) -> None:
        """``iteration,checkpoint,<scalar metrics>,seconds`` (one row per checkpoint)."""
        records = sorted_records(records)
        keys = [k for k in scalar_metric_keys(records) if k != 'seconds']
        with open(path, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['iteration', 'checkpoint', *keys, 'seconds'])
            for r in records:
                writer.writerow(['' if r.get('iteration') is None else r['iteration'], r['checkpoint'],
                                 *[f'{r[k]:.6g}' for k in keys], f'{r.get("seconds", 0.0):.2f}'])

    def plot(self, records: list[dict[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
        """``<name>_curve.png``: every scalar metric against the iteration. Returns the paths written."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        records = sorted_records(records)
        keys = [k for k in scalar_metric_keys(records) if k != 'seconds']
        if not keys:
            return []
        xs = [r['iteration'] if r.get('iteration') is not None else i for i, r in enumerate(records)]
        fig, axes = plt.subplots(len(keys), 1, figsize=(6, 2.5 * len(keys)), dpi=100, squeeze=False)
        for ax, key in zip(axes[:, 0], keys):
            ax.plot(xs, [r[key] for r in records], marker='o')
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel('iteration')
        fig.suptitle(f'{self.name} over training')
        fig.tight_layout()
        path = Path(out_dir) / f'{self.name}_curve.png'
        fig.savefig(path)
        plt.close(fig)
        return [path]

    def report(self, record: dict[str, Any]) -> Any:
        """A rich renderable (or None) printed after each scored checkpoint. Default: None."""
        return None

    def summary_table(self, records: list[dict[str, Any]]) -> Any:
        """A rich ``Table`` of the scalar metrics of ``records`` (printed at the end)."""
        from rich.table import Table
        records = sorted_records(records)
        keys = [k for k in scalar_metric_keys(records) if k != 'seconds']
        table = Table(title=f'{self.name} per checkpoint')
        for col in ('iteration', 'checkpoint', *keys):
            table.add_column(col, justify='right')
        for r in records:
            table.add_row('' if r.get('iteration') is None else str(r['iteration']), Path(r['checkpoint']).name,
                          *[f'{r[k]:.5g}' for k in keys])
        return table
