"""tools/train.py: the examples its --help shows are real, and bad --cfg-options fail at start."""
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mllm_align.engine.launch import prepare_config

REPO = Path(__file__).resolve().parents[2]
TINY = 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py'


def _train_module():
    spec = importlib.util.spec_from_file_location('train_cli', REPO / 'tools/train.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(monkeypatch, argv: list[str]):
    monkeypatch.setattr(sys, 'argv', ['tools/train.py', *argv])
    return _train_module().parse_args()


def _help_text(monkeypatch, capsys) -> str:
    with pytest.raises(SystemExit):
        _parse(monkeypatch, ['--help'])
    return capsys.readouterr().out


def _examples(help_text: str) -> list[list[str]]:
    """The train.py argument lists of every example command in the help ($CFG expanded)."""
    env, found = {}, []
    for line in help_text.splitlines():
        line = line.strip()
        if re.fullmatch(r'[A-Z_]+=\S+', line):  # CFG=projects/...
            name, value = line.split('=', 1)
            env[name] = value
            continue
        if not line.startswith(('python ', 'bash ')):
            continue  # prose
        words = shlex.split(line)
        if words[:2] == ['python', 'tools/train.py']:
            found.append(words[2:])
        elif words[:3] == ['bash', 'tools/dist.sh', 'train']:
            found.append([words[3], *words[5:]])  # CONFIG NPROC [train.py args]
    return [[env.get(w[1:], w) if w.startswith('$') else w for w in args] for args in found]


def test_every_example_in_the_help_names_a_real_config_and_loads(monkeypatch, capsys):
    examples = _examples(_help_text(monkeypatch, capsys))
    assert len(examples) >= 6 and any('--cfg-options' in e for e in examples)
    for argv in examples:
        config = argv[0]
        assert config == 'CONFIG' or (REPO / config).is_file(), f'--help shows a config that does not exist: {config}'
        argv = [TINY if w == 'CONFIG' else w for w in argv]
        args = _parse(monkeypatch, argv)
        if args.deepspeed and importlib.util.find_spec('deepspeed') is None:
            continue
        prepare_config(str(REPO / args.config), cfg_options=args.cfg_options, deepspeed=args.deepspeed)


def test_help_override_examples_do_what_they_say(monkeypatch):
    args = _parse(monkeypatch, [TINY, '--cfg-options', 'train_cfg.max_iters=100',
                                'default_hooks.checkpoint.interval=50'])
    cfg = prepare_config(str(REPO / TINY), cfg_options=args.cfg_options)
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.max_epochs, cfg.default_hooks.checkpoint.interval) == (100, None, 50)


def test_cfg_options_item_without_equals_is_a_usage_error(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(monkeypatch, [TINY, '--cfg-options', 'model.freeze_llm'])
    assert exit_info.value.code == 2
    assert "'model.freeze_llm' is not KEY=VALUE: write it as model.freeze_llm=VALUE" in capsys.readouterr().err


@pytest.mark.slow
def test_hook_typo_fails_in_seconds_before_training(tmp_path):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, 'tools/train.py', TINY, '--work-dir', str(tmp_path),
                           '--cfg-options', 'default_hooks.checkpoint.intervall=2'],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "'default_hooks.checkpoint.intervall' is not an argument of" in proc.stderr
    assert "did you mean 'interval'" in proc.stderr
    assert time.monotonic() - start < 60 and not list(tmp_path.rglob('iter_*'))


@pytest.mark.slow
def test_part1_data_and_warmup_overrides_reach_the_run(tiny_assets, tmp_path):
    """64 samples (8 iterations per epoch): warmup_ratio 0.1 would be a 0-iteration warm-up, 0.3 is 2
    iterations; every image is missing, so reaching the first batch fails naming the new data."""
    rows = json.loads((REPO / 'data/tiny/shapes/pretrain.json').read_text())[:64]
    for row in rows:
        row['image'] = 'images/missing_' + row['image'].rsplit('/', 1)[-1]
    (tmp_path / 'mine.json').write_text(json.dumps(rows))
    proc = subprocess.run([sys.executable, 'tools/train.py', TINY, '--work-dir', str(tmp_path / 'work'),
                           '--cfg-options', f'data_path={tmp_path / "mine.json"}', 'warmup_ratio=0.3',
                           'train_cfg.max_iters=1', 'custom_hooks=[]'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'warmup_ratio' not in proc.stderr.split('Traceback')[-1], proc.stderr[-2000:]  # the warm-up is long enough
    assert 'missing_' in proc.stderr, proc.stderr[-2000:]  # the run read the overridden data file
