"""The demo's closing report: what pre-training, MIR, SFT and the VQA evaluation wrote, as one table and plots.

``tools/demo.sh`` lays its run out as::

    DEMO_DIR/pretrain/         iter_*.pth, <timestamp>/vis_data/scalars.json, chat_samples.jsonl
    DEMO_DIR/pretrain/mir/     mir.json, mir.csv, mir_curve.png, mir_layers.png   (tools/eval_mir.py)
    DEMO_DIR/sft/              iter_*.pth, <timestamp>/vis_data/scalars.json, chat_samples.jsonl
    DEMO_DIR/sft/vqa/          vqa.json (iteration 0 = before SFT), vqa_curve.png, answers/*.png   (tools/eval_vqa.py)
    DEMO_DIR/sft/mmvm/         mmvm.json, mmvm_categories.png: the MMVM mini bench after SFT   (tools/eval_mmvm.py)

:func:`summarize_demo` reads those files only (no model is built) and returns the report as text;
:func:`write_demo_report` also writes ``summary.md`` and ``loss_curve.png`` (both stages' training loss)
into ``DEMO_DIR``. A missing part (a stage not run yet) is reported as missing, not an error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .run_summary import read_scalars

__all__ = ['DemoResults', 'read_demo_results', 'summarize_demo', 'write_demo_report']


@dataclass
class DemoResults:
    """What a demo run left behind (each part ``None``/empty when that stage has not run)."""

    demo_dir: Path
    pretrain_loss: list[tuple[int, float]] = field(default_factory=list)
    sft_loss: list[tuple[int, float]] = field(default_factory=list)
    mir: list[tuple[int, float]] = field(default_factory=list)  # (iteration, MIR)
    vqa: list[dict[str, Any]] = field(default_factory=list)  # records of vqa.json, by iteration
    mmvm: list[dict[str, Any]] = field(default_factory=list)  # records of mmvm.json, by iteration
    chat: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # stage -> chat samples
    files: list[Path] = field(default_factory=list)  # plots and answered images found


def _loss(work_dir: Path) -> list[tuple[int, float]]:
    return [(int(r['iter']), float(r['loss'])) for r in read_scalars(work_dir) if 'loss' in r and 'iter' in r]


def _results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = json.loads(path.read_text(encoding='utf-8')).get('results', [])
    return sorted((r for r in records if r.get('iteration') is not None), key=lambda r: r['iteration'])


def _chat(work_dir: Path) -> list[dict[str, Any]]:
    path = work_dir / 'chat_samples.jsonl'
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]


def read_demo_results(demo_dir: str | Path) -> DemoResults:
    """Collect the files of a demo run (layout in the module docstring)."""
    demo_dir = Path(demo_dir)
    pre, sft = demo_dir / 'pretrain', demo_dir / 'sft'
    out = DemoResults(demo_dir=demo_dir, pretrain_loss=_loss(pre), sft_loss=_loss(sft),
                      mir=[(int(r['iteration']), float(r['mir'])) for r in _results(pre / 'mir' / 'mir.json')],
                      vqa=_results(sft / 'vqa' / 'vqa.json'), mmvm=_results(sft / 'mmvm' / 'mmvm.json'),
                      chat={'pretrain': _chat(pre), 'sft': _chat(sft)})
    for pattern in ('pretrain/mir/*.png', 'sft/vqa/*.png', 'sft/vqa/answers/*.png', 'sft/mmvm/*.png',
                    'loss_curve.png'):
        out.files += sorted(demo_dir.glob(pattern))
    return out


def _fmt_curve(points: list[tuple[int, float]], digits: int = 3) -> str:
    return ', '.join(f'{it}: {v:.{digits}f}' for it, v in points)


def summarize_demo(demo_dir: str | Path) -> str:
    """The report as Markdown text: the summary table, MIR per iteration, chat samples, the files written."""
    res = read_demo_results(demo_dir)
    rows: list[tuple[str, str]] = []
    if res.pretrain_loss:
        (i0, l0), (i1, l1) = res.pretrain_loss[0], res.pretrain_loss[-1]
        rows.append(('pre-training loss', f'{l0:.3f} (iter {i0}) → {l1:.3f} (iter {i1})'))
    if res.mir:
        (i0, m0), (i1, m1) = res.mir[0], res.mir[-1]
        best = min(res.mir, key=lambda p: p[1])
        rows.append(('MIR (lower = better aligned)', f'{m0:.3f} (iter {i0}) → {m1:.3f} (iter {i1}); '
                                                     f'lowest {best[1]:.3f} at iter {best[0]}'))
    if res.sft_loss:
        (i0, l0), (i1, l1) = res.sft_loss[0], res.sft_loss[-1]
        rows.append(('SFT loss', f'{l0:.3f} (iter {i0}) → {l1:.3f} (iter {i1})'))
    if res.vqa:
        first, last = res.vqa[0], res.vqa[-1]
        n = last['num_samples']
        rows.append((f'easy-VQA test accuracy ({n} questions)',
                     f'{first["accuracy"]:.3f} before SFT (iter {first["iteration"]}) → {last["accuracy"]:.3f} '
                     f'after (iter {last["iteration"]})'))
        rows.append(('majority-answer baseline',
                     f'{last["majority_accuracy"]:.3f} (always {last["majority_answer"]!r})'))
        if last.get('prior_accuracy') is not None:
            rows.append(('blind prior (question only, no image)', f'{last["prior_accuracy"]:.3f}'))
    if res.mmvm:
        last = res.mmvm[-1]
        rows.append((f'MMVM mini bench, visual matching ({last["num_questions"]} questions, never trained)',
                     f'{last["accuracy"]:.3f} after SFT (iter {last["iteration"]}); chance '
                     f'{last.get("chance_accuracy", float("nan")):.3f}; unread answers {last.get("unread")}'))
    lines = [f'# mllm_align demo: {res.demo_dir}', '', '| | |', '|---|---|']
    lines += [f'| {k} | {v} |' for k, v in rows] or ['| (nothing yet) | |']
    if res.mir:
        lines += ['', f'MIR per saved pre-training iteration: {_fmt_curve(res.mir)}']
    if res.vqa:
        last = res.vqa[-1]
        lines += ['', f'Accuracy per question type after SFT (iter {last["iteration"]}):', '',
                  '| question type | count | accuracy |', '|---|---:|---:|']
        lines += [f'| {t} | {r["count"]} | {r["accuracy"]:.3f} |' for t, r in sorted(last['per_type'].items())]
    for stage, samples in res.chat.items():
        for tag in ('before_train', 'after_train'):
            subset = [s for s in samples if s.get('tag') == tag]
            if subset:
                lines += ['', f'Chat samples, {stage} {tag.replace("_", " ")} (iter {subset[0].get("iter")}):']
                lines += [f'- {Path(str(s.get("image", ""))).name} {s.get("question", "")!r} → {s.get("answer")!r}'
                          for s in subset]
    if res.files:
        lines += ['', 'Files:'] + [f'- {p}' for p in res.files]
    return '\n'.join(lines) + '\n'


def _plot_losses(res: DemoResults, path: Path) -> Path | None:
    stages = [(name, pts) for name, pts in (('pre-training (projector + MoCa)', res.pretrain_loss),
                                            ('SFT (LoRA + projector + MoCa)', res.sft_loss)) if pts]
    if not stages:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), dpi=100, squeeze=False)
    for ax, (name, pts) in zip(axes[0], stages):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='.', color='black')
        ax.set_title(name)
        ax.set_xlabel('iteration')
        ax.set_ylabel('training loss')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_demo_report(demo_dir: str | Path) -> tuple[str, list[Path]]:
    """Write ``loss_curve.png`` and ``summary.md`` into ``demo_dir``; return the report text and the paths."""
    demo_dir = Path(demo_dir)
    written = [p for p in [_plot_losses(read_demo_results(demo_dir), demo_dir / 'loss_curve.png')] if p]
    text = summarize_demo(demo_dir)
    (demo_dir / 'summary.md').write_text(text, encoding='utf-8')
    return text, written + [demo_dir / 'summary.md']
