"""MIR (Modality Integration Rate) as a runner evaluator: ``mir.json``, ``mir.csv``, two PNGs.

Per checkpoint, :class:`MIREvaluator` reads the probe's hidden states twice
(:func:`~mllm_align.models.hidden_states.probe_batches` →
:func:`~mllm_align.models.hidden_states.batch_modality_hidden_states`): ``process`` feeds each pair's
vision/text rows into a :class:`~mllm_align.metrics.mir.MIRAccumulator` (state flat in N; the second
pass exists because Eq. M2 flags outlier rows against statistics of all rows). The second pass replays the
first pass's rows when they fit in ``replay_budget_bytes`` (``tools/eval_mir.py --replay-mb``, default 1 GiB:
a small model or probe), and runs the model again otherwise (a 7B model at N = 100 holds tens of GB).
``compute_metrics`` finalises it: MIR = log10 Σ_k D_k and the per-layer D_k, α_k and row counts (``metrics/mir.py``).
"""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
from mmengine.logging import print_log

from ..metrics.mir import SQRT_MODES, MIRAccumulator
from ..models.hidden_states import (
    TEXT_TOKENS,
    batch_modality_hidden_states,
    num_llm_layers,
    parse_layers,
    probe_batches,
)
from .evaluator import ModelEvaluator, sorted_records

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..models.base import MultimodalModel

__all__ = ['MIR_RESULTS_FORMAT', 'MIREvaluator', 'canonical_layers']

#: ``format`` of ``mir.json`` (unchanged since ``tools/eval_mir.py`` first wrote it).
MIR_RESULTS_FORMAT = 'mllm_align.mir_eval/1'


def canonical_layers(layers: Any) -> str:
    """A layer spec as the settings record it: ``'all'`` or sorted comma-separated numbers."""
    if layers is None or (isinstance(layers, str) and layers.strip().lower() == 'all'):
        return 'all'
    return ','.join(str(n) for n in parse_layers(layers, 1 << 30))


def check_mir_settings(sqrt: str, text_tokens: str) -> None:
    """Raise ``ValueError`` for an unknown ``sqrt`` mode or ``text_tokens`` rule (before any work is done)."""
    if sqrt not in SQRT_MODES:
        raise ValueError(f'sqrt={sqrt!r}: use one of {SQRT_MODES}.')
    if text_tokens not in TEXT_TOKENS:
        raise ValueError(f'text_tokens={text_tokens!r}: use one of {TEXT_TOKENS}.')


class MIREvaluator(ModelEvaluator):
    """MIR of each checkpoint on a fixed probe.

    Args:
        probe: a :class:`~mllm_align.data.mir_probe.MIRProbe` (its image processor set).
        layers: ``'all'`` (1..K) or a spec (``'1-16'``, ``'1,3,5'``; HF hidden-state indices).
        sqrt: ``'exact'`` | ``'seed-sqrtm'`` | ``'seed-fast'`` (``metrics/mir.py``).
        text_tokens: which non-vision positions count as text (``models/hidden_states.py``).
        batch_size: pairs per forward pass.
        sources: how the probe was made (``images``, ``image_folder``, ``eval_num``, ``seed``), recorded in
            the settings.
        median_bins: the accumulator's histogram bins for the median row.

    Raises:
        ValueError: an unknown ``sqrt`` or ``text_tokens``, a bad layer spec, ``batch_size < 1``.
    """

    name = 'mir'
    results_format = MIR_RESULTS_FORMAT
    num_passes = 2

    def __init__(self, probe: Any, *, layers: Any = 'all', sqrt: str = 'exact', text_tokens: str = 'after_image',
                 batch_size: int = 1, sources: dict[str, Any] | None = None, median_bins: int = 1024) -> None:
        super().__init__()
        check_mir_settings(sqrt, text_tokens)
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
        self.probe = probe
        self.layers = layers
        self.layer_spec = canonical_layers(layers)
        self.sqrt = sqrt
        self.text_tokens = text_tokens
        self.batch_size = batch_size
        self.sources = dict(sources or {})
        self.median_bins = median_bins
        self.layer_ids: list[int] = []
        self._acc: MIRAccumulator | None = None

    # ------------------------------------------------------------------ what is scored
    def settings(self) -> dict[str, Any]:
        return {'probe_fingerprint': self.probe.fingerprint(), **self.sources, 'texts': self.probe.sources['texts'],
                'num_pairs': len(self.probe), 'layers': self.layer_spec, 'sqrt': self.sqrt,
                'text_tokens': self.text_tokens, **self.probe.settings()}

    def info(self) -> dict[str, Any]:
        return dict(probe=dict(pairs=[[p.image_id, p.text_id] for p in self.probe.pairs],
                               skipped_images=[list(s) for s in self.probe.skipped_images]))

    def prepare(self, model: 'MultimodalModel') -> None:
        """Resolve the layers against the model's K (an out-of-range layer is an error naming K)."""
        self.layer_ids = parse_layers(self.layers, num_llm_layers(model))

    def num_samples(self) -> int:
        return len(self.probe)

    def batches(self, model: 'MultimodalModel') -> Iterable[dict[str, Any]]:
        return probe_batches(model, self.probe, self.batch_size)

    def run_batch(self, model: 'MultimodalModel', data_batch: dict[str, Any]) -> Sequence[Any]:
        if not self.layer_ids:
            self.prepare(model)
        return batch_modality_hidden_states(model, data_batch, self.layer_ids, torch.float32,
                                            text_tokens=self.text_tokens, probe=self.probe)  # type: ignore[arg-type]

    def begin_pass(self, index: int) -> None:
        if index == 0:
            self._acc = MIRAccumulator(len(self.layer_ids), sqrt=self.sqrt,  # type: ignore[arg-type]
                                       median_bins=self.median_bins)
        else:
            self._accumulator().start_second_pass()

    def _accumulator(self) -> MIRAccumulator:
        if self._acc is None:
            raise RuntimeError('MIREvaluator: begin_pass(0) must run before process (use score()).')
        return self._acc

    # ------------------------------------------------------------------ process / compute_metrics
    def process(self, data_batch: Any, outputs: Sequence[Any]) -> None:
        """Feed each pair's ``(vision_layers, text_layers)`` rows into the accumulator; keep the row counts."""
        acc = self._accumulator()
        for vision_layers, text_layers in outputs:
            acc.update(vision_layers, text_layers)
            self.results.append((int(vision_layers[0].shape[0]), int(text_layers[0].shape[0])))

    def compute_metrics(self, results: list) -> dict[str, Any]:
        """MIR, its bound, per-layer D_k (and bound), α_k and row counts of the accumulated probe."""
        result = self._accumulator().compute()
        self._acc = None
        if not math.isfinite(result.mir):
            print_log(f'MIR is {result.mir} (Σ D_k <= 0, possible with sqrt={self.sqrt!r}).', logger='current',
                      level=logging.WARNING)
        return dict(mir=result.mir, mir_bound=result.mir_bound, layers=list(self.layer_ids),
                    per_layer=result.per_layer, per_layer_bound=result.per_layer_bound, alpha=result.alpha,
                    num_pairs=len(self.probe), sqrt=self.sqrt, text_tokens=self.text_tokens,
                    num_vision_rows=result.num_vision_rows, num_text_rows=result.num_text_rows,
                    num_vision_replaced=result.num_vision_replaced, num_text_replaced=result.num_text_replaced)

    # ------------------------------------------------------------------ outputs
    def write_csv(self, records: list[dict[str, Any]], path: str | os.PathLike) -> None:
        """``iteration,checkpoint,mir,num_layers,mir_bound,num_pairs,sqrt,text_tokens,seconds,layer_<k>...``."""
        records = sorted_records(records)
        layer_cols = sorted({k for r in records for k in r['layers']})
        fields = ['iteration', 'checkpoint', 'mir', 'num_layers', 'mir_bound', 'num_pairs', 'sqrt', 'text_tokens',
                  'seconds'] + [f'layer_{k}' for k in layer_cols]
        with open(path, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(fields)
            for r in records:
                per = dict(zip(r['layers'], r['per_layer']))
                writer.writerow([r['iteration'] if r['iteration'] is not None else '', r['checkpoint'],
                                 f'{r["mir"]:.6f}', len(r['layers']), f'{r["mir_bound"]:.3g}', r['num_pairs'],
                                 r['sqrt'], r['text_tokens'], f'{r["seconds"]:.2f}']
                                + [f'{per[k]:.6g}' if k in per else '' for k in layer_cols])

    def plot(self, records: list[dict[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
        """``mir_curve.png`` (MIR vs iteration) and ``mir_layers.png`` (D_k vs layer, one line per checkpoint)."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        out_dir = Path(out_dir)
        records = sorted_records(records)
        xs = [r['iteration'] if r['iteration'] is not None else i for i, r in enumerate(records)]
        paths = []

        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.plot(xs, [r['mir'] for r in records], marker='o')
        ax.set_xlabel('iteration')
        ax.set_ylabel('MIR = log10 Σ_k D_k (lower = better aligned)')
        ax.set_title(f'MIR over training (N={records[0]["num_pairs"]}, sqrt={records[0]["sqrt"]})')
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / 'mir_curve.png')
        fig.savefig(paths[-1])
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        cmap = plt.get_cmap('viridis')
        positive = all(d > 0 for r in records for d in r['per_layer'])
        for i, r in enumerate(records):
            label = f'iter {r["iteration"]}' if r['iteration'] is not None else Path(r['checkpoint']).name
            ax.plot(r['layers'], r['per_layer'], marker='.', color=cmap(i / max(1, len(records) - 1)), label=label)
        if positive:
            ax.set_yscale('log')
        ax.set_xlabel('LLM layer k')
        ax.set_ylabel('D_k (per-layer Fréchet distance)')
        ax.set_title('Per-layer modality gap')
        ax.grid(alpha=0.3)
        if len(records) <= 12:
            ax.legend(fontsize=7)
        else:
            sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(min(xs), max(xs)))
            fig.colorbar(sm, ax=ax, label='iteration')
        fig.tight_layout()
        paths.append(out_dir / 'mir_layers.png')
        fig.savefig(paths[-1])
        plt.close(fig)
        return paths

    def report(self, record: dict[str, Any]) -> Any:
        """Per-layer table of one checkpoint: D_k, α_k and (replaced) rows per modality."""
        from rich.table import Table
        title = (f'{Path(record["checkpoint"]).name}: MIR = {record["mir"]:.4f} '
                 f'(N={record["num_pairs"]}, {record["seconds"]:.1f} s)')
        table = Table(title=title)
        for col in ('layer', 'D_k', 'alpha_k', 'vision rows (replaced)', 'text rows (replaced)'):
            table.add_column(col, justify='right')
        for j, k in enumerate(record['layers']):
            table.add_row(str(k), f'{record["per_layer"][j]:.5g}', f'{record["alpha"][j]:.4g}',
                          f'{record["num_vision_rows"][j]} ({record["num_vision_replaced"][j]})',
                          f'{record["num_text_rows"][j]} ({record["num_text_replaced"][j]})')
        return table

    def summary_table(self, records: list[dict[str, Any]]) -> Any:
        from rich.table import Table
        table = Table(title='MIR per checkpoint')
        for col in ('iteration', 'checkpoint', 'MIR', 'Σ D_k', 'layers', 'pairs'):
            table.add_column(col, justify='right')
        for r in sorted_records(records):
            table.add_row('' if r['iteration'] is None else str(r['iteration']), Path(r['checkpoint']).name,
                          f'{r["mir"]:.4f}', f'{sum(r["per_layer"]):.5g}', str(len(r['layers'])),
                          str(r['num_pairs']))
        return table
