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


def test_failed_training_names_the_log_and_keeps_finished_settings(sweep_file, monkeypatch):
    from mllm_align.engine import law_sweep

    sweep = load_sweep_config(sweep_file)
    fake = Fake()
    real = law_sweep.train_command
    # the real command line is checked in the dry run; a failing stand-in keeps this test fast
    monkeypatch.setattr(law_sweep, 'train_command', lambda sw, s, wd: ['bash', '-c', 'echo step 1; echo "boom: out of '
                        'memory" >&2; exit 3'] if s.name == 'abcd' else real(sw, s, wd))
    steps = SweepSteps(lambda sw, s, wd: fake.steps().train(sw, s, wd) if s.name == 'ab' else
                       law_sweep.train_stage1(sw, s, wd), fake.steps().a_score, fake.steps().c_score)
    with pytest.raises(RuntimeError, match=r"(?s)Stage 1 of setting 'abcd' failed \(exit 3\); log: \S*abcd/"
                                           r"sweep_train.log\n.*step 1\nboom: out of memory"):
        run_sweep(sweep, steps=steps, echo=lambda s: None)
    assert [r['setting'] for r in _table(sweep)] == ['ab']  # the finished setting is in the table


def _fake_checkpoint(path: Path, iteration: int, max_iters: int) -> None:
    """A torch.save file with what mmengine records: meta.iter and message_hub.runtime_info.max_iters."""
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'meta': {'iter': iteration}, 'state_dict': {'w': torch.zeros(1)},
                'message_hub': {'runtime_info': {'iter': iteration, 'max_iters': max_iters}}}, path)


def test_final_checkpoint_is_the_one_at_max_iters(tmp_path):
    from mllm_align.engine.law_sweep import final_checkpoint

    assert final_checkpoint(tmp_path / 'none') is None
    _fake_checkpoint(tmp_path / 'iter_2.pth', 2, 4)
    assert final_checkpoint(tmp_path) is None  # interrupted at 2 of 4
    _fake_checkpoint(tmp_path / 'iter_4.pth', 4, 4)
    assert final_checkpoint(tmp_path) == tmp_path / 'iter_4.pth'
    (tmp_path / 'iter_6.pth').write_bytes(b'PK torn')  # a torn newer file is skipped
    assert final_checkpoint(tmp_path) == tmp_path / 'iter_4.pth'


def test_an_existing_finished_run_is_reused_without_training(sweep_file):
    sweep = load_sweep_config(sweep_file)
    _fake_checkpoint(sweep.work_root / 'abcd' / 'iter_5.pth', 5, 5)
    _fake_checkpoint(sweep.work_root / 'ab' / 'iter_2.pth', 2, 5)  # unfinished: trained (resumed)
    fake = Fake()
    lines = []
    run_sweep(sweep, steps=fake.steps(), echo=lines.append)
    assert [c for c in fake.calls if c[0] == 'train'] == [('train', 'ab'), ('train', 'xyz')]
    assert any('already holds the final checkpoint iter_5.pth' in x for x in lines)


def test_changed_training_settings_stop_unless_redo_train(sweep_file):
    sweep = load_sweep_config(sweep_file)
    run_sweep(sweep, steps=Fake().steps(), echo=lambda s: None)
    changed = load_sweep_config(sweep_file, {'cfg_options.max_iters': 7})
    assert changed.settings[0].cfg_options == {'max_iters': 7, 'vision_setting': 'ab'}
    with pytest.raises(ValueError, match=r"ab: its stage-1 run in .* other settings \(cfg_options: .*max_iters.*"
                                         r"--redo train"):
        run_sweep(changed, steps=Fake().steps(), echo=lambda s: None)
    fake = Fake()
    run_sweep(changed, only=['ab'], redo=['train'], steps=fake.steps(), echo=lambda s: None)
    assert fake.calls == [('train', 'ab'), ('a_score', 'ab'), ('c_score', 'ab')]
    aside = [p.name for p in sweep.work_root.iterdir() if p.name.startswith('ab.replaced-')]
    assert len(aside) == 1 and (sweep.work_root / aside[0] / 'iter_3.pth').is_file()  # moved aside, not deleted


def test_csv_keeps_full_precision_and_leaves_no_temp_file(sweep_file):
    sweep = load_sweep_config(sweep_file)
    run_sweep(sweep, steps=Fake().steps(), echo=lambda s: None)
    table = _table(sweep)
    assert table[0]['C'] == repr(100 * 0.02) and table[0]['A_v3'] == repr(-1.0 - 2 / 10)
    assert sorted(p.name for p in sweep.out_csv.parent.glob('.*tmp')) == []


def test_sweep_config_keys_are_checked(sweep_file, tmp_path):
    with pytest.raises(KeyError, match="'nprocs' is not a sweep config key"):
        load_sweep_config(sweep_file, {'nprocs': 2})
    with pytest.raises(KeyError, match="a_score has unknown key"):
        load_sweep_config(sweep_file, {'a_score.num_pair': 2})
    assert load_sweep_config(sweep_file, {'a_score.seed': 3}).a_score == dict(num_pairs=4, seed=3)
    bad = tmp_path / 'bad.py'
    bad.write_text(sweep_file.read_text() + "stage_1 = 'y.py'\n")
    with pytest.raises(KeyError, match=r"unknown key\(s\) \['stage_1'\]"):
        load_sweep_config(bad)
    names = tmp_path / 'names.py'
    names.write_text(sweep_file.read_text() + "table_names = dict(ab='A B', nope='N')\n")
    with pytest.raises(ValueError, match=r"table_names names \['nope'\]"):
        load_sweep_config(names)


@pytest.mark.parametrize('name', ['tiny_cpu', 'easyvqa_real'])
def test_shipped_sweep_configs_load(name):
    root = Path(__file__).resolve().parents[2]
    sweep = load_sweep_config(root / 'projects/law/sweeps' / f'{name}.py')
    assert len(sweep.settings) == 4 and all(s.cfg_options == {'vision_setting': s.name} for s in sweep.settings)
    assert all(s.table_name for s in sweep.settings) and sweep.out_csv == sweep.work_root / 'law_table.csv'


def test_train_command_round_trips_option_values(sweep_file):
    from mmengine.config import DictAction

    from mllm_align.engine.law_sweep import SweepSetting, train_command

    sweep = load_sweep_config(sweep_file)
    options = {'vision_setting': 'ab', 'max_iters': 4, 'betas': (0.9, 0.95), 'data_path': 'a/b.json',
               'paths': ['x', 'y']}
    cmd = train_command(sweep, SweepSetting('ab', options), Path('w/ab'))
    assert cmd[2:] == ['train', 'x.py', '1', '--work-dir', 'w/ab', '--resume', 'auto', '--cfg-options',
                       'vision_setting=ab', 'max_iters=4', 'betas=(0.9, 0.95)', 'data_path=a/b.json',
                       "paths=['x', 'y']"]
    parsed = {item.split('=', 1)[0]: DictAction._parse_iterable(item.split('=', 1)[1]) for item in cmd[10:]}
    assert parsed == options
    with pytest.raises(ValueError, match=r"Setting 'ab': cfg_options data_path='a/b c.json' contains whitespace"):
        train_command(sweep, SweepSetting('ab', {'data_path': 'a/b c.json'}), Path('w/ab'))


def test_c_score_options_apply_to_c_only_and_are_part_of_its_fingerprint(sweep_file, monkeypatch):
    from mllm_align.engine import c_score_eval, law_sweep

    seen = []

    def fake_c(config, *, cfg_options, spair_root, **kw):
        seen.append((cfg_options, spair_root, kw))
        return type('R', (), dict(pck=0.5, pairs=2, skipped=0))()

    monkeypatch.setattr(c_score_eval, 'c_score_from_config', fake_c)
    sweep = load_sweep_config(sweep_file, {'c_score.cfg_options': dict(vision_pool=1, vision_image_size=224)})
    fake = Fake()
    steps = SweepSteps(fake.steps().train, fake.steps().a_score, law_sweep.c_score_step)
    run_sweep(sweep, only=['ab'], steps=steps, echo=lambda s: None)
    assert seen == [({'vision_setting': 'ab', 'vision_pool': 1, 'vision_image_size': 224}, 'spair', {})]
    assert sweep.settings[0].cfg_options == {'vision_setting': 'ab'}  # training and A keep the setting's own
    # another C-only option recomputes C and nothing else
    fake = Fake()
    changed = load_sweep_config(sweep_file, {'c_score.cfg_options': dict(vision_pool=2)})
    run_sweep(changed, only=['ab'], steps=SweepSteps(fake.steps().train, fake.steps().a_score,
                                                     law_sweep.c_score_step), echo=lambda s: None)
    assert fake.calls == [] and seen[-1][0] == {'vision_setting': 'ab', 'vision_pool': 2}
    with pytest.raises(ValueError, match=r'c_score.cfg_options = .*give a dict'):
        load_sweep_config(sweep_file, {'c_score.cfg_options': 'vision_pool=1'})
