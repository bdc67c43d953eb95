"""The law sweep's orchestration with fake steps: order, resume after an interruption, reuse, redo, CSV, errors."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mllm_align.engine.law_sweep import SweepSteps, load_sweep_config, run_sweep


class Fake:
    def __init__(self, fail_at: tuple[str, str] | None = None):
        self.calls: list[tuple[str, str]] = []
        self.fail_at = fail_at

    def _call(self, step, name):
        self.calls.append((step, name))
        if self.fail_at == (step, name):
            raise KeyboardInterrupt  # an interruption mid-sweep

    def steps(self) -> SweepSteps:
        def train(sweep, s, work_dir):
            self._call('train', s.name)
            work_dir.mkdir(parents=True, exist_ok=True)
            (work_dir / 'iter_3.pth').write_text('x')
            return dict(checkpoint=str(work_dir / 'iter_3.pth'))

        def a(sweep, s, ckpt):
            self._call('a_score', s.name)
            return dict(a_score_v3=-1.0 - len(s.name) / 10, pairs=sweep.a_score['num_pairs'])

        def c(sweep, s):
            self._call('c_score', s.name)
            return dict(pck=len(s.name) / 100, pairs=3, skipped=0)
        return SweepSteps(train, a, c)


@pytest.fixture()
def sweep_file(tmp_path):
    path = tmp_path / 'sweep.py'
    path.write_text(f"stage1_config = 'x.py'\nsettings = ['ab', 'abcd', dict(name='xyz', table_name='X Y Z')]\n"
                    f"work_root = {str(tmp_path / 'work')!r}\na_score = dict(num_pairs=4)\n"
                    "c_score = dict(spair_root='spair')\n")
    return path


def _table(sweep):
    with sweep.out_csv.open() as f:
        return list(csv.DictReader(f))


def test_runs_every_step_in_order_and_writes_the_table(sweep_file):
    sweep = load_sweep_config(sweep_file)
    fake = Fake()
    rows = run_sweep(sweep, steps=fake.steps(), echo=lambda s: None)
    assert fake.calls == [(step, n) for n in ('ab', 'abcd', 'xyz') for step in ('train', 'a_score', 'c_score')]
    table = _table(sweep)
    assert [r['setting'] for r in table] == ['ab', 'abcd', 'xyz'] and len(rows) == 3
    assert float(table[1]['C']) == pytest.approx(4.0) and float(table[1]['A_v3']) == pytest.approx(-1.4)
    assert table[2]['table_name'] == 'X Y Z'
    again = Fake()
    run_sweep(sweep, steps=again.steps(), echo=lambda s: None)
    assert again.calls == []  # everything reused


@pytest.mark.parametrize('fail_at', [('train', 'abcd'), ('a_score', 'abcd'), ('c_score', 'xyz')])
def test_resume_after_an_interruption_runs_only_what_is_left(sweep_file, fail_at):
    sweep = load_sweep_config(sweep_file)
    first = Fake(fail_at)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, steps=first.steps(), echo=lambda s: None)
    second = Fake()
    run_sweep(sweep, steps=second.steps(), echo=lambda s: None)
    everything = [(step, n) for n in ('ab', 'abcd', 'xyz') for step in ('train', 'a_score', 'c_score')]
    done_before = first.calls[:-1]  # the interrupted call did not finish
    assert second.calls == [c for c in everything if c not in done_before]
    assert [r['setting'] for r in _table(sweep)] == ['ab', 'abcd', 'xyz']


def test_changed_settings_redo_only_that_step_and_redo_only(sweep_file):
    sweep = load_sweep_config(sweep_file)
    run_sweep(sweep, steps=Fake().steps(), echo=lambda s: None)
    more = load_sweep_config(sweep_file, {'a_score': dict(num_pairs=8)})
    fake = Fake()
    run_sweep(more, steps=fake.steps(), echo=lambda s: None)
    assert fake.calls == [('a_score', n) for n in ('ab', 'abcd', 'xyz')]
    fake = Fake()
    run_sweep(more, only=['abcd'], redo=['c_score'], steps=fake.steps(), echo=lambda s: None)
    assert fake.calls == [('c_score', 'abcd')]
    # a deleted checkpoint means the training has to be resumed / redone
    Path(sweep.work_root / 'ab' / 'iter_3.pth').unlink()
    fake = Fake()
    run_sweep(more, only=['ab'], steps=fake.steps(), echo=lambda s: None)
    assert fake.calls == [('train', 'ab'), ('a_score', 'ab')]


def test_dry_run_and_bad_input(sweep_file, tmp_path):
    sweep = load_sweep_config(sweep_file)
    lines = []
    assert run_sweep(sweep, dry_run=True, steps=Fake().steps(), echo=lines.append) == []
    assert len(lines) == 3 and '--cfg-options vision_setting=abcd' in lines[1] and not sweep.work_root.exists()
    with pytest.raises(ValueError, match="--only \\['nope'\\]"):
        run_sweep(sweep, only=['nope'], steps=Fake().steps())
    with pytest.raises(ValueError, match='redo'):
        run_sweep(sweep, redo=['eval'], steps=Fake().steps())
    bad = tmp_path / 'bad.py'
    bad.write_text("stage1_config = 'x.py'\nsettings = ['a', 'a']\nwork_root = 'w'\nc_score = dict(spair_root='s')\n")
    with pytest.raises(ValueError, match='distinct names'):
        load_sweep_config(bad)


def test_failed_training_names_the_log(sweep_file, tmp_path, monkeypatch):
    from mllm_align.engine import law_sweep

    sweep = load_sweep_config(sweep_file, {'stage1_config': str(tmp_path / 'missing.py')})
    fake = Fake()
    steps = SweepSteps(law_sweep.train_stage1, fake.steps().a_score, fake.steps().c_score)
    with pytest.raises(RuntimeError, match=r"Stage 1 of setting 'ab' failed \(exit \d+\); log: .*sweep_train.log"):
        run_sweep(sweep, steps=steps, echo=lambda s: None)
