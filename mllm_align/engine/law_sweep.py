"""The Law of Vision Representation's sweep: from a list of vision settings to the table of A and C.

For each setting of a sweep config (``projects/law/sweeps/*.py``), in order::

    train  stage 1 through ``bash tools/dist.sh train STAGE1 NPROC --work-dir <root>/<name> --resume auto
           --cfg-options vision_setting=<name> …`` (its output appended to ``<root>/<name>/sweep_train.log``);
           a work dir that already holds its *final* checkpoint is reused without training
    A      A_v3 of that final checkpoint (:func:`~mllm_align.engine.a_score_eval.evaluate_a_score`, results in
           ``<root>/<name>/a_score``): the mean caption log-likelihood under the frozen stage-1 model
    C      C score of the setting's vision representation (:func:`~mllm_align.engine.c_score_eval.c_score_from_config`;
           only the vision encoder is built, so C does not depend on the training), under the setting's
           cfg_options with ``c_score['cfg_options']`` on top (C of the towers at their native resolution while
           stage 1 trains on a pooled grid: ``c_score = dict(…, cfg_options=dict(vision_pool=1))``)

and after every setting the table ``setting,C,A_v3`` (``+ table_name``) is rewritten atomically, C in percent
(PCK × 100, as in the paper's table), full float precision (rounding is only for the printout); it is what
``tools/ac_law.py`` reads once benchmark columns are added.

**Final checkpoint.** A stage-1 config counts its length in epochs or iterations (``TrainLoop``); the number of
iterations of an epoch depends on the data and the number of processes, so it is not read from the config but
from the run's own record: the newest complete ``iter_N.pth`` (checked without unpickling,
:func:`~mllm_align.engine.resume.checkpoint_problem`) is final when its ``meta.iter`` equals the ``max_iters``
that mmengine stored in its ``message_hub`` (read with the safe ``weights_only`` loader).

**State** (``<root>/sweep_state.json``, written atomically after every step): each step's result and the settings
it was computed with (its *fingerprint*: train = stage-1 config path and SHA-256, cfg_options, nproc; A = the
train fingerprint, the checkpoint's path/size/mtime, the ``a_score`` options; C = config, cfg_options, the
``c_score`` options). A re-run after an interruption (a kill at any point) continues where it stopped and never
recomputes a finished step with the same fingerprint. A changed A or C fingerprint (another ``num_pairs``)
recomputes that step only. A changed *train* fingerprint is an error naming what changed, because resuming the
old checkpoints under new settings would mix two runs: ``redo=('train',)`` (``--redo train``) moves the old work
dir aside to ``<name>.replaced-<time>`` (nothing is deleted) and trains afresh.

A sweep config (pure Python, mmengine-loadable; unknown keys are an error)::

    stage1_config = 'projects/law/configs/pretrain/llava_v15_7b_law_pretrain_tiny_cpu.py'
    settings = ['tiny_clip',                                   # a name in the stage-1 config's catalogue
                dict(name='mine', cfg_options=dict(vision_setting='tiny_dinov2', lr=1e-3))]  # free-form
    nproc = 1                                       # processes per training run (tools/dist.sh NGPUS)
    work_root = 'work_dirs/law_sweep_tiny'          # <work_root>/<setting>/ per setting
    out_csv = None                                  # default <work_root>/law_table.csv
    cfg_options = dict()                            # applied to every setting's stage-1 config (train, A, C)
    a_score = dict(num_pairs=100, seed=0, data=None)   # + image_folder=, batch_size=, device=
    c_score = dict(spair_root='data/tiny/spair', split='test', convention='geoaware', match='argmax',
                   average='image')                # + alpha=, batch_size=, device=, categories=, limit=,
                                                   #   cfg_options= (stage-1 options for C only)
    table_names = dict(tiny_clip='CLIP@224')       # optional: setting -> the paper's row label
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..evaluation.runner import atomic_write_text, settings_diff

__all__ = ['REPO_ROOT', 'STEPS', 'SweepConfig', 'SweepSetting', 'SweepSteps', 'final_checkpoint',
           'load_sweep_config', 'run_sweep', 'train_command']

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = ('train', 'a_score', 'c_score')
STATE_NAME = 'sweep_state.json'
STATE_FORMAT = 'mllm_align.law_sweep/1'
SWEEP_KEYS = ('stage1_config', 'settings', 'nproc', 'work_root', 'out_csv', 'cfg_options', 'a_score', 'c_score',
              'table_names')
A_SCORE_KEYS = ('num_pairs', 'seed', 'data', 'image_folder', 'batch_size', 'device')


@dataclass(frozen=True)
class SweepSetting:
    """One row of the table: its name, the stage-1 ``--cfg-options`` that select it, the paper's row label."""

    name: str
    cfg_options: dict[str, Any]
    table_name: str | None = None


@dataclass
class SweepConfig:
    """A loaded sweep config (module docstring); paths relative to the repository root stay relative."""

    path: Path
    stage1_config: Path
    settings: list[SweepSetting]
    nproc: int
    work_root: Path
    out_csv: Path
    a_score: dict[str, Any] = field(default_factory=dict)
    c_score: dict[str, Any] = field(default_factory=dict)


def _set_dotted(cfg: dict[str, Any], key: str, value: Any, path: Path) -> None:
    """``a_score.num_pairs=8`` into ``cfg['a_score']['num_pairs']``; the top-level key must be a sweep key."""
    top, _, rest = key.partition('.')
    if top not in SWEEP_KEYS:
        raise KeyError(f'--cfg-options {key}={value!r}: {top!r} is not a sweep config key (known: '
                       f'{", ".join(SWEEP_KEYS)}); stage-1 settings go under cfg_options, e.g. '
                       f'cfg_options.max_iters=4.')
    if not rest:
        cfg[top] = value
        return
    node = cfg.get(top)
    if node is None:
        node = cfg[top] = {}
    if not isinstance(node, dict):
        raise KeyError(f'--cfg-options {key}: {top!r} in {path} is {node!r}, not a dict.')
    node[rest] = value  # one level: under cfg_options a stage-1 key keeps its dots (train_cfg.max_iters=4)


def load_sweep_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read a sweep config (format: module docstring).

    Args:
        path: the sweep config file.
        overrides: ``{key: value}`` replacing its keys (``tools/law_sweep.py --cfg-options``); a dotted key sets
            one field (``a_score.num_pairs=8``, ``cfg_options.max_iters=4``: a stage-1 option for every setting).

    Raises:
        FileNotFoundError: no such file.
        KeyError: an unknown key (in the file or the overrides).
        ValueError: a missing required key, bad or repeated settings, ``c_score`` without ``spair_root``.
    """
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Sweep config {path} does not exist.')
    cfg = {k: v for k, v in Config.fromfile(str(path)).to_dict().items() if not k.startswith('_')}
    unknown = sorted(set(cfg) - set(SWEEP_KEYS))
    if unknown:
        raise KeyError(f'Sweep config {path}: unknown key(s) {unknown}; known: {", ".join(SWEEP_KEYS)} '
                       '(see mllm_align/engine/law_sweep.py).')
    for key, value in (overrides or {}).items():
        _set_dotted(cfg, key, value, path)
    for key in ('stage1_config', 'settings', 'work_root'):
        if key not in cfg:
            raise ValueError(f'Sweep config {path} has no `{key}` (see mllm_align/engine/law_sweep.py).')
    common = dict(cfg.get('cfg_options') or {})
    table_names = dict(cfg.get('table_names') or {})
    settings = []
    for i, s in enumerate(cfg['settings']):
        if isinstance(s, str):
            settings.append(SweepSetting(s, {**common, 'vision_setting': s}, table_names.get(s)))
        elif isinstance(s, dict) and 'name' in s and set(s) <= {'name', 'cfg_options', 'table_name'}:
            own = dict(s.get('cfg_options') or {'vision_setting': s['name']})
            settings.append(SweepSetting(str(s['name']), {**common, **own},
                                         s.get('table_name') or table_names.get(s['name'])))
        else:
            raise ValueError(f'{path}: settings[{i}] = {s!r}: give a catalogue name or dict(name=…, cfg_options=…, '
                             'table_name=…).')
    names = [s.name for s in settings]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f'{path}: settings must be a non-empty list of distinct names, got {names}.')
    stray = sorted(set(table_names) - set(names))
    if stray:
        raise ValueError(f'{path}: table_names names {stray}, which are not settings ({names}).')
    if 'spair_root' not in (cfg.get('c_score') or {}):
        raise ValueError(f'{path}: c_score needs spair_root (an SPair-format directory).')
    c_options = (cfg.get('c_score') or {}).get('cfg_options')
    if c_options is not None and not isinstance(c_options, dict):
        raise ValueError(f'{path}: c_score.cfg_options = {c_options!r}: give a dict of stage-1 options for the C '
                         'score only, e.g. dict(vision_pool=1).')
    bad_a = sorted(set(cfg.get('a_score') or {}) - set(A_SCORE_KEYS))
    if bad_a:
        raise KeyError(f'{path}: a_score has unknown key(s) {bad_a}; known: {", ".join(A_SCORE_KEYS)}.')
    nproc = int(cfg.get('nproc', 1))
    if nproc < 1:
        raise ValueError(f'{path}: nproc = {nproc}; give at least 1 process per training run.')
    work_root = Path(cfg['work_root'])
    out_csv = Path(cfg.get('out_csv') or work_root / 'law_table.csv')
    return SweepConfig(path, Path(cfg['stage1_config']), settings, nproc, work_root, out_csv,
                       dict(cfg.get('a_score') or {}), dict(cfg.get('c_score') or {}))


# ------------------------------------------------------------------------------------------------ steps
@dataclass
class SweepSteps:
    """The three steps, injectable (tests pass fakes). Each returns a JSON-able dict.

    ``train(sweep, setting, work_dir) -> {'checkpoint': path, …}``; ``a_score(sweep, setting, checkpoint) ->
    {'a_score_v3': float, …}``; ``c_score(sweep, setting) -> {'pck': fraction, …}``.
    """

    train: Callable[[SweepConfig, SweepSetting, Path], dict[str, Any]]
    a_score: Callable[[SweepConfig, SweepSetting, str], dict[str, Any]]
    c_score: Callable[[SweepConfig, SweepSetting], dict[str, Any]]


def final_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The run's final checkpoint, or None when the newest complete ``iter_N.pth`` is not the last iteration.

    Final = its ``meta['iter']`` equals the ``max_iters`` mmengine recorded in its ``message_hub`` runtime info
    (module docstring). Torn checkpoints are skipped without unpickling; the newest complete one is loaded
    with the safe loader (trainable weights only: a few MB).
    """
    from ..checkpoint_io import load_checkpoint_file
    from .resume import checkpoint_problem, find_checkpoints

    for cand in find_checkpoints(work_dir):
        if checkpoint_problem(cand.path) is not None:
            continue
        ckpt = load_checkpoint_file(cand.path)
        info = ((ckpt.get('message_hub') or {}).get('runtime_info') or {}) if isinstance(ckpt, dict) else {}
        meta = ckpt.get('meta') or {} if isinstance(ckpt, dict) else {}
        done = meta.get('iter', cand.iteration)
        return cand.path if info.get('max_iters') is not None and done == info['max_iters'] else None
    return None


def _option_text(setting: str, key: str, value: Any) -> str:
    """A value as ``tools/train.py --cfg-options`` parses it back (mmengine's DictAction).

    Raises:
        ValueError: a string with whitespace (DictAction deletes it: ``a b.json`` would arrive as ``ab.json``).
    """
    if isinstance(value, str) and any(ch.isspace() for ch in value):
        raise ValueError(f'Setting {setting!r}: cfg_options {key}={value!r} contains whitespace, which '
                         "tools/train.py --cfg-options drops (mmengine's DictAction); use a path without spaces "
                         '(a symlink) or set the value in the stage-1 config.')
    return repr(value) if isinstance(value, (list, tuple, dict)) else str(value)


def train_command(sweep: SweepConfig, setting: SweepSetting, work_dir: Path) -> list[str]:
    """``bash tools/dist.sh train STAGE1 NPROC --work-dir DIR --resume auto --cfg-options k=v …``."""
    options = [f'{k}={_option_text(setting.name, k, v)}' for k, v in setting.cfg_options.items()]
    return (['bash', str(REPO_ROOT / 'tools' / 'dist.sh'), 'train', str(sweep.stage1_config), str(sweep.nproc),
             '--work-dir', str(work_dir), '--resume', 'auto'] + (['--cfg-options', *options] if options else []))


def _die_with_the_sweep() -> None:
    from .distributed import set_parent_death_signal
    set_parent_death_signal(signal.SIGTERM)


def train_stage1(sweep: SweepConfig, setting: SweepSetting, work_dir: Path) -> dict[str, Any]:
    """Run (or resume: ``--resume auto``) stage 1 through tools/dist.sh; returns its final checkpoint.

    Raises:
        RuntimeError: a non-zero exit (the setting, the log file and the log's last 15 lines), or a run that
            ended without a final checkpoint.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    cmd = train_command(sweep, setting, work_dir)
    log = work_dir / 'sweep_train.log'
    with log.open('a') as f:
        f.write(f'$ {shlex.join(cmd)}\n')
        f.flush()
        # the launcher (torchrun, exec'd by dist.sh under this pid) gets SIGTERM if the sweep dies, even by
        # SIGKILL, so no orphaned run keeps writing into the work dir a re-run resumes; its ranks follow it
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
                             preexec_fn=_die_with_the_sweep)
    if rc != 0:
        tail = log.read_text(errors='replace').splitlines()[-15:]
        raise RuntimeError(f'Stage 1 of setting {setting.name!r} failed (exit {rc}); log: {log}\n' + '\n'.join(tail)
                           + '\nFix the cause and re-run the same command: finished settings are kept and this '
                             'run resumes from its last complete checkpoint.')
    ckpt = final_checkpoint(work_dir)
    if ckpt is None:
        raise RuntimeError(f'Stage 1 of setting {setting.name!r} exited 0 but left no final checkpoint in {work_dir} '
                           f'(the newest complete iter_*.pth is not at max_iters; log: {log}). Keep '
                           'default_hooks.checkpoint.save_last=True in the stage-1 config.')
    return dict(checkpoint=str(ckpt))


def a_score_step(sweep: SweepConfig, setting: SweepSetting, checkpoint: str) -> dict[str, Any]:
    """A v3 of one checkpoint under the setting's stage-1 config (results in ``<work dir>/a_score``)."""
    from .a_score_eval import evaluate_a_score
    kw = {k: v for k, v in sweep.a_score.items() if k in A_SCORE_KEYS}
    records = evaluate_a_score(checkpoint, sweep.stage1_config, cfg_options=setting.cfg_options,
                               out_dir=Path(checkpoint).parent / 'a_score', progress=False, plots=False,
                               overwrite=True, console=_quiet_console(), **kw)
    return dict(a_score_v3=float(records[-1]['a_score_v3']), pairs=int(records[-1]['pairs']))


def c_score_step(sweep: SweepConfig, setting: SweepSetting) -> dict[str, Any]:
    """C (PCK, a fraction) of the setting's vision representation; only the vision encoder is built."""
    from .c_score_eval import c_score_from_config
    kw = dict(sweep.c_score)
    options = {**setting.cfg_options, **(kw.pop('cfg_options', None) or {})}
    result = c_score_from_config(sweep.stage1_config, cfg_options=options, **kw)
    return dict(pck=float(result.pck), pairs=result.pairs, skipped=result.skipped)


def _quiet_console():
    from rich.console import Console
    return Console(file=io.StringIO())


DEFAULT_STEPS = SweepSteps(train_stage1, a_score_step, c_score_step)


# ------------------------------------------------------------------------------------------------ state
def _load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {'format': STATE_FORMAT, 'settings': {}}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f'{path} is not valid JSON ({err.msg}): delete it to start the sweep over (finished '
                         'training runs are found again and reused).') from None
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        raise ValueError(f'{path} is not a law-sweep state file ({STATE_FORMAT}); use another work_root.')
    return state


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def _file_sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _ckpt_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return dict(checkpoint=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns)


def _write_csv(sweep: SweepConfig, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Rewrite ``out_csv`` (atomically) with every setting whose A and C are known, in config order."""
    rows = []
    for s in sweep.settings:
        st = state['settings'].get(s.name, {})
        a, c = (st.get('a_score') or {}).get('result'), (st.get('c_score') or {}).get('result')
        if a is None or c is None:
            continue
        rows.append(dict(setting=s.name, C=100.0 * float(c['pck']), A_v3=float(a['a_score_v3']),
                         table_name=s.table_name))
    buf = io.StringIO()
    cols = ['setting', 'C', 'A_v3'] + (['table_name'] if any(r['table_name'] for r in rows) else [])
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(cols)
    for r in rows:
        writer.writerow([r['setting'], repr(r['C']), repr(r['A_v3'])] +
                        ([r['table_name'] or ''] if 'table_name' in cols else []))
    sweep.out_csv.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep.out_csv, buf.getvalue())
    return rows


def run_sweep(sweep: SweepConfig | str | os.PathLike, *, only: Sequence[str] | None = None,
              redo: Sequence[str] = (), dry_run: bool = False, progress: bool = True,
              console: Any = None, steps: SweepSteps | None = None,
              echo: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run (or continue) the sweep; returns the table rows written (module docstring).

    Args:
        sweep: a :class:`SweepConfig` or its file.
        only: setting names to run (default all; the table still lists every finished one).
        redo: steps to recompute even when finished (``'train'``: the old work dir is moved aside, not deleted).
        dry_run: print the commands and steps that would run; run and write nothing.
        progress: print one line per step (``[2/4] tiny_siglip: train … done in 41 s``); the final table always.
        console: a rich ``Console`` for the lines and the table (default: plain ``print``).
        steps: the step functions (default: the real ones; tests pass fakes).
        echo: where lines go instead of ``console`` (a callable taking one string).

    Returns:
        ``[{'setting', 'C' (percent), 'A_v3', 'table_name'}, …]``, in config order, for the finished settings.

    Raises:
        ValueError: an unknown ``only`` name or ``redo`` step; a finished training run whose settings changed
            (without ``redo=('train',)``); an unreadable state file.
        RuntimeError: a failed training run (the setting, its log file and the log's last lines).
    """
    sweep = sweep if isinstance(sweep, SweepConfig) else load_sweep_config(sweep)
    steps = steps or DEFAULT_STEPS
    say = echo or (console.print if console is not None else print)
    step_line = say if progress else (lambda line: None)
    unknown = sorted(set(redo) - set(STEPS))
    if unknown:
        raise ValueError(f'redo={unknown}: steps are {", ".join(STEPS)}.')
    names = [s.name for s in sweep.settings]
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise ValueError(f'--only {missing}: not settings of {sweep.path} ({names}).')
    todo = [s for s in sweep.settings if not only or s.name in only]
    state_path = sweep.work_root / STATE_NAME
    if dry_run:
        state = _load_state(state_path) if state_path.is_file() else {'settings': {}}
        for s in todo:
            done = [step for step in STEPS if step in state['settings'].get(s.name, {})]
            say(f'{s.name}: {shlex.join(train_command(sweep, s, sweep.work_root / s.name))}'
                f'{"  (finished: " + ", ".join(done) + ")" if done else ""}; then A v3 {sweep.a_score}, '
                f'C {sweep.c_score}')
        return []
    state = _load_state(state_path)
    sweep.work_root.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        atomic_write_text(state_path, json.dumps(state, indent=2, sort_keys=True) + '\n')

    config_sha = _file_sha256(sweep.stage1_config)
    for k, s in enumerate(todo, 1):
        st = state['settings'].setdefault(s.name, {})
        work_dir = sweep.work_root / s.name
        tag = f'[{k}/{len(todo)}] {s.name}'
        common = _jsonable(dict(config=str(sweep.stage1_config), config_sha256=config_sha, cfg_options=s.cfg_options))
        fp_train = dict(common, nproc=sweep.nproc)
        done = st.get('train')
        ckpt = Path(done['result']['checkpoint']) if done else None
        if done and 'train' not in redo and done.get('settings') != fp_train:
            diff = settings_diff(done.get('settings') or {}, fp_train)
            raise ValueError(f'{s.name}: its stage-1 run in {work_dir} was trained with other settings ('
                             f'{"; ".join(diff)}). Resuming it would mix two runs: pass --redo train (the old work '
                             'dir is moved aside) or restore the settings.')
        if done and 'train' not in redo and ckpt is not None and ckpt.is_file():
            step_line(f'{tag}: train done earlier, reused ({ckpt.name})')
        else:
            if 'train' in redo and work_dir.exists():
                aside = work_dir.with_name(f'{work_dir.name}.replaced-{time.strftime("%Y%m%d_%H%M%S")}')
                os.replace(work_dir, aside)
                step_line(f'{tag}: --redo train: moved the old run to {aside}')
                for step in ('train', 'a_score'):  # C reads only the vision encoder: its fingerprint decides
                    st.pop(step, None)
                save()
            found = final_checkpoint(work_dir) if not done and 'train' not in redo else None
            start = time.perf_counter()
            if found is not None:
                result = dict(checkpoint=str(found), reused_existing=True)
                step_line(f'{tag}: train: {work_dir} already holds the final checkpoint {found.name}, reused')
            else:
                step_line(f'{tag}: train …')
                result = steps.train(sweep, s, work_dir)
                took = time.perf_counter() - start
                step_line(f'{tag}: train done in {took:.1f} s ({Path(result["checkpoint"]).name})')
            st['train'] = dict(settings=fp_train, result=result, seconds=round(time.perf_counter() - start, 2))
            save()
        ckpt = Path(st['train']['result']['checkpoint'])
        fps = {'a_score': _jsonable(dict(fp_train, **_ckpt_key(ckpt), a_score=sweep.a_score)),
               'c_score': _jsonable(dict(common, c_score=sweep.c_score))}
        for step in ('a_score', 'c_score'):
            done = st.get(step)
            if done and done.get('settings') == fps[step] and step not in redo:
                step_line(f'{tag}: {step} done earlier, reused  {_brief(done["result"])}')
                continue
            if done and step not in redo:
                step_line(f'{tag}: {step}: settings changed ({"; ".join(settings_diff(done["settings"], fps[step]))})')
            start = time.perf_counter()
            step_line(f'{tag}: {step} …')
            result = steps.a_score(sweep, s, str(ckpt)) if step == 'a_score' else steps.c_score(sweep, s)
            st[step] = dict(settings=fps[step], result=result, seconds=round(time.perf_counter() - start, 2))
            save()
            step_line(f'{tag}: {step} done in {time.perf_counter() - start:.1f} s  {_brief(result)}')
        _write_csv(sweep, state)
    rows = _write_csv(sweep, state)
    say(f'\n{sweep.out_csv}:')
    say(f'  {"setting":<24}{"C (%)":>9}{"A_v3":>10}')
    for r in rows:
        say(f'  {r["setting"]:<24}{r["C"]:>9.2f}{r["A_v3"]:>10.4f}')
    return rows


def _brief(result: dict[str, Any]) -> str:
    if 'a_score_v3' in result:
        return f'A_v3 {result["a_score_v3"]:.4f}'
    if 'pck' in result:
        return f'C {100 * result["pck"]:.2f} %'
    return str(result.get('checkpoint', ''))
