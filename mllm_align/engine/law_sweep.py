"""The Law of Vision Representation's sweep: from a list of vision settings to the table of A and C.

For each setting of a sweep config (``projects/law/sweeps/*.py``), in order::

    train  stage 1 through ``bash tools/dist.sh train STAGE1 NPROC --work-dir <root>/<name> --resume auto
           --cfg-options vision_setting=<name>`` (its log in ``<root>/<name>/sweep_train.log``); a finished run
           is reused
    A      A_v3 of its final checkpoint (:func:`~mllm_align.engine.a_score_eval.evaluate_a_score`)
    C      C score of its vision representation (:func:`~mllm_align.engine.c_score_eval.c_score_from_config`)

and after every setting the table ``setting,C,A_v3`` (C in percent, as in the paper's table) is rewritten,
ready for ``tools/ac_law.py`` once benchmark columns are added. Progress is kept in
``<root>/sweep_state.json`` (written atomically after every step, with each step's settings): a re-run after an
interruption continues where it stopped; a finished step is redone only when its settings changed (another
``num_pairs``, another checkpoint) or when asked (``redo``).

A sweep config (pure Python, mmengine-loadable)::

    stage1_config = 'projects/law/configs/pretrain/llava_v15_7b_law_pretrain_tiny_cpu.py'
    settings = ['tiny_clip', 'tiny_siglip', dict(name='mine', cfg_options=dict(vision_setting='tiny_dinov2'))]
    nproc = 1
    work_root = 'work_dirs/law_sweep_tiny'
    a_score = dict(num_pairs=16, seed=0)            # + data=, image_folder=, batch_size=
    c_score = dict(spair_root='data/tiny/spair', split='test', convention='geoaware', match='argmax')
    out_csv = None                                  # default <work_root>/law_table.csv
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..evaluation.runner import atomic_write_text

__all__ = ['SweepSetting', 'SweepConfig', 'SweepSteps', 'load_sweep_config', 'run_sweep', 'STEPS', 'REPO_ROOT']

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = ('train', 'a_score', 'c_score')
STATE_NAME = 'sweep_state.json'


@dataclass(frozen=True)
class SweepSetting:
    name: str
    cfg_options: dict[str, Any]
    table_name: str | None = None


@dataclass
class SweepConfig:
    path: Path
    stage1_config: Path
    settings: list[SweepSetting]
    nproc: int
    work_root: Path
    out_csv: Path
    a_score: dict[str, Any] = field(default_factory=dict)
    c_score: dict[str, Any] = field(default_factory=dict)


def load_sweep_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read a sweep config (module docstring); ``overrides`` replace its top-level keys (``--cfg-options``)."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Sweep config {path} does not exist.')
    cfg = Config.fromfile(str(path)).to_dict()
    cfg.update(overrides or {})
    for key in ('stage1_config', 'settings', 'work_root'):
        if key not in cfg:
            raise ValueError(f'Sweep config {path} has no `{key}` (see mllm_align/engine/law_sweep.py).')
    settings = []
    for i, s in enumerate(cfg['settings']):
        if isinstance(s, str):
            settings.append(SweepSetting(s, {'vision_setting': s}))
        elif isinstance(s, dict) and 'name' in s:
            settings.append(SweepSetting(str(s['name']), dict(s.get('cfg_options') or {'vision_setting': s['name']}),
                                         s.get('table_name')))
        else:
            raise ValueError(f'{path}: settings[{i}] = {s!r}: give a catalogue name or dict(name=…, cfg_options=…).')
    names = [s.name for s in settings]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f'{path}: settings must be a non-empty list of distinct names, got {names}.')
    if 'spair_root' not in (cfg.get('c_score') or {}):
        raise ValueError(f'{path}: c_score needs spair_root (an SPair-format directory).')
    stage1 = Path(cfg['stage1_config'])
    work_root = Path(cfg['work_root'])
    out_csv = Path(cfg.get('out_csv') or work_root / 'law_table.csv')
    return SweepConfig(path, stage1, settings, int(cfg.get('nproc', 1)), work_root, out_csv,
                       dict(cfg.get('a_score') or {}), dict(cfg.get('c_score') or {}))


# ------------------------------------------------------------------------------------------------ steps
@dataclass
class SweepSteps:
    """The three steps, injectable (tests pass fakes). Each returns a JSON-able dict."""

    train: Callable[[SweepConfig, SweepSetting, Path], dict[str, Any]]
    a_score: Callable[[SweepConfig, SweepSetting, str], dict[str, Any]]
    c_score: Callable[[SweepConfig, SweepSetting], dict[str, Any]]


def _newest_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete ``iter_N.pth`` of ``work_dir`` (checked without unpickling), or None."""
    from .resume import checkpoint_problem, find_checkpoints
    for cand in find_checkpoints(work_dir):
        if checkpoint_problem(cand.path) is None:
            return cand.path
    return None


def train_stage1(sweep: SweepConfig, setting: SweepSetting, work_dir: Path) -> dict[str, Any]:
    """Run stage 1 through tools/dist.sh (resuming a partial run); the newest complete checkpoint."""
    work_dir.mkdir(parents=True, exist_ok=True)
    options = [f'{k}={v}' for k, v in setting.cfg_options.items()]
    cmd = ['bash', str(REPO_ROOT / 'tools' / 'dist.sh'), 'train', str(sweep.stage1_config), str(sweep.nproc),
           '--work-dir', str(work_dir), '--resume', 'auto'] + (['--cfg-options', *options] if options else [])
    log = work_dir / 'sweep_train.log'
    with log.open('a') as f:
        f.write(f'$ {" ".join(cmd)}\n')
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT))
    if rc != 0:
        tail = log.read_text(errors='replace').splitlines()[-15:]
        raise RuntimeError(f'Stage 1 of setting {setting.name!r} failed (exit {rc}); log: {log}\n' + '\n'.join(tail))
    ckpt = _newest_checkpoint(work_dir)
    if ckpt is None:
        raise RuntimeError(f'Stage 1 of setting {setting.name!r} finished but left no complete checkpoint in '
                           f'{work_dir} (log: {log}).')
    return dict(checkpoint=str(ckpt))


def a_score_step(sweep: SweepConfig, setting: SweepSetting, checkpoint: str) -> dict[str, Any]:
    from .a_score_eval import evaluate_a_score
    kw = {k: v for k, v in sweep.a_score.items() if k in ('data', 'image_folder', 'num_pairs', 'seed', 'batch_size',
                                                          'device')}
    records = evaluate_a_score(checkpoint, sweep.stage1_config, cfg_options=setting.cfg_options,
                               out_dir=Path(checkpoint).parent / 'a_score', progress=False, plots=False,
                               overwrite=True, console=_quiet_console(), **kw)
    return dict(a_score_v3=float(records[-1]['a_score_v3']), pairs=int(records[-1]['pairs']))


def c_score_step(sweep: SweepConfig, setting: SweepSetting) -> dict[str, Any]:
    from .c_score_eval import c_score_from_config
    kw = dict(sweep.c_score)
    result = c_score_from_config(sweep.stage1_config, cfg_options=setting.cfg_options, **kw)
    return dict(pck=float(result.pck), pairs=result.pairs, skipped=result.skipped)


def _quiet_console():
    from rich.console import Console
    return Console(file=io.StringIO())


DEFAULT_STEPS = SweepSteps(train_stage1, a_score_step, c_score_step)


# ------------------------------------------------------------------------------------------------ state
def _load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {'format': 'mllm_align.law_sweep/1', 'settings': {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f'{path} is not valid JSON ({err.msg}): delete it to start the sweep over.') from None


def _write_csv(sweep: SweepConfig, state: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s in sweep.settings:
        st = state['settings'].get(s.name, {})
        a, c = st.get('a_score', {}).get('result'), st.get('c_score', {}).get('result')
        if a is None or c is None:
            continue
        rows.append(dict(setting=s.name, C=100 * c['pck'], A_v3=a['a_score_v3'], table_name=s.table_name))
    buf = io.StringIO()
    cols = ['setting', 'C', 'A_v3'] + (['table_name'] if any(r['table_name'] for r in rows) else [])
    writer = csv.writer(buf)
    writer.writerow(cols)
    for r in rows:
        writer.writerow([r['setting'], f'{r["C"]:.6g}', f'{r["A_v3"]:.6g}'] +
                        ([r['table_name'] or ''] if 'table_name' in cols else []))
    sweep.out_csv.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep.out_csv, buf.getvalue())
    return rows


def run_sweep(sweep: SweepConfig | str | os.PathLike, *, only: Sequence[str] | None = None,
              redo: Sequence[str] = (), dry_run: bool = False, steps: SweepSteps | None = None,
              echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or continue) the sweep; returns the table rows written (module docstring).

    Args:
        sweep: a :class:`SweepConfig` or its file.
        only: setting names to run (default all; the table still lists every finished one).
        redo: steps to recompute even when finished (``'train'`` retrains from scratch in a new work dir is not
            done: it resumes the run's own checkpoints; delete the work dir to retrain).
        dry_run: print what would run, run nothing.
        steps: the step functions (default: the real ones).

    Raises:
        RuntimeError: a failed training run (the setting, its log file and the log's last lines).
    """
    sweep = sweep if isinstance(sweep, SweepConfig) else load_sweep_config(sweep)
    steps = steps or DEFAULT_STEPS
    unknown = sorted(set(redo) - set(STEPS))
    if unknown:
        raise ValueError(f'redo={unknown}: steps are {STEPS}.')
    names = [s.name for s in sweep.settings]
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise ValueError(f'--only {missing}: not settings of {sweep.path} ({names}).')
    todo = [s for s in sweep.settings if not only or s.name in only]
    state_path = sweep.work_root / STATE_NAME
    state = _load_state(state_path)
    if dry_run:
        for s in todo:
            opts = ' '.join(f'{k}={v}' for k, v in s.cfg_options.items())
            echo(f'{s.name}: bash tools/dist.sh train {sweep.stage1_config} {sweep.nproc} --work-dir '
                 f'{sweep.work_root / s.name} --resume auto --cfg-options {opts}; then A v3 {sweep.a_score}, '
                 f'C {sweep.c_score}')
        return []
    sweep.work_root.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        atomic_write_text(state_path, json.dumps(state, indent=2, sort_keys=True) + '\n')

    for k, s in enumerate(todo, 1):
        st = state['settings'].setdefault(s.name, {})
        work_dir = sweep.work_root / s.name
        fingerprints = {
            'train': dict(config=str(sweep.stage1_config), cfg_options={a: repr(b) for a, b in s.cfg_options.items()},
                          nproc=sweep.nproc),
            'c_score': dict(sorted(sweep.c_score.items()), cfg_options=repr(s.cfg_options)),
        }
        for step in STEPS:
            if step == 'a_score':
                ckpt = Path(st['train']['result']['checkpoint'])
                stamp = ckpt.stat().st_mtime_ns if ckpt.exists() else None  # a retrained checkpoint is rescored
                fingerprints['a_score'] = dict(sorted(sweep.a_score.items()), checkpoint=str(ckpt),
                                               checkpoint_mtime_ns=stamp, cfg_options=repr(s.cfg_options))
            fp = json.loads(json.dumps(fingerprints[step], default=str))
            done = st.get(step)
            if done and done.get('settings') == fp and step not in redo and \
                    (step != 'train' or Path(done['result']['checkpoint']).exists()):
                echo(f'[{k}/{len(todo)}] {s.name}: {step} done earlier, reused')
                continue
            start = time.perf_counter()
            echo(f'[{k}/{len(todo)}] {s.name}: {step} …')
            if step == 'train':
                result = steps.train(sweep, s, work_dir)
            elif step == 'a_score':
                result = steps.a_score(sweep, s, st['train']['result']['checkpoint'])
            else:
                result = steps.c_score(sweep, s)
            st[step] = dict(settings=fp, result=result, seconds=round(time.perf_counter() - start, 2))
            save()
            echo(f'[{k}/{len(todo)}] {s.name}: {step} done in {time.perf_counter() - start:.1f} s  {_brief(result)}')
        rows = _write_csv(sweep, state)
    rows = _write_csv(sweep, state)
    echo(f'\n{sweep.out_csv}:')
    echo(f'  {"setting":<24}{"C (%)":>9}{"A_v3":>10}')
    for r in rows:
        echo(f'  {r["setting"]:<24}{r["C"]:>9.2f}{r["A_v3"]:>10.4f}')
    return rows


def _brief(result: dict[str, Any]) -> str:
    if 'a_score_v3' in result:
        return f'A_v3 {result["a_score_v3"]:.4f}'
    if 'pck' in result:
        return f'C {100 * result["pck"]:.2f} %'
    return str(result.get('checkpoint', ''))
