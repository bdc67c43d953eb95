"""Read back what a training run wrote (checkpoints, scalars, chat samples, MIR) as a text report."""
from __future__ import annotations

import json
import re
from pathlib import Path


def _iter_of(path: Path) -> int:
    match = re.search(r'iter_(\d+)\.pth$', path.name)
    return int(match.group(1)) if match else -1


def read_scalars(work_dir: Path) -> list[dict]:
    """Training scalars logged by mmengine's LocalVisBackend (latest run in ``work_dir``)."""
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))
    if not files:
        return []
    rows = []
    for line in files[-1].read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def summarize_work_dir(work_dir: Path) -> str:
    """A plain-text report of a work dir."""
    out = [f'Work dir: {work_dir}']
    ckpts = sorted(work_dir.glob('iter_*.pth'), key=_iter_of)
    if ckpts:
        sizes = [p.stat().st_size for p in ckpts]
        out.append(f'Checkpoints: {len(ckpts)} ({", ".join(p.name for p in ckpts)}), '
                   f'{sum(sizes) / 1e6:.2f} MB in all (trained parameters + optimizer state only)')
    else:
        out.append('Checkpoints: none')
    scalars = [r for r in read_scalars(work_dir) if 'loss' in r]
    if scalars:
        first, last = scalars[0], scalars[-1]
        out.append(f'Loss: {first["loss"]:.4f} at iter {first.get("iter")} → {last["loss"]:.4f} at iter '
                   f'{last.get("iter")} ({len(scalars)} logged points)')
        times = [r['time'] for r in scalars if 'time' in r]
        if times:
            out.append(f'Time per iteration: {sum(times) / len(times):.3f} s (mean of logged points)')
    chat = work_dir / 'chat_samples.jsonl'
    if chat.is_file():
        records = [json.loads(x) for x in chat.read_text().splitlines() if x.strip()]
        for tag in ('before_train', 'after_train'):
            subset = [r for r in records if r['tag'] == tag]
            if subset:
                out.append(f'Chat samples {tag} (iter {subset[0]["iter"]}):')
                out += [f'  {r["question"]!r} → {r["answer"]!r}' for r in subset]
    mir_csv = work_dir / 'mir' / 'mir.csv'
    if mir_csv.is_file():
        out.append(f'MIR per iteration ({mir_csv}):')
        out += ['  ' + line for line in mir_csv.read_text().splitlines()[:50]]
        for png in sorted((work_dir / 'mir').glob('*.png')):
            out.append(f'MIR plot: {png}')
    return '\n'.join(out)
