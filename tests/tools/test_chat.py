"""tools/chat.py on the tiny LLaVA finetune config: a one-shot answer, a piped interactive session, bad input."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'projects/llava/configs/finetune/llava_v15_7b_finetune_tiny_cpu.py'
IMAGE = 'data/tiny/shapes/images/eval_000000.png'
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # the tiny config's paths (data/tiny/...) are relative to the repo


def _chat_main():
    spec = importlib.util.spec_from_file_location('chat_tool', REPO / 'tools' / 'chat.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope='module')
def checkpoint_and_answers(tiny_assets, tmp_path_factory):
    """An iter_3.pth (perturbed projector) and the greedy answers of a ChatSession on it, computed in-process."""
    from mllm_align.data.image_loading import load_image
    from mllm_align.engine.vqa_eval import load_model_source
    from mllm_align.evaluation.chat import ChatSession

    src = load_model_source(REPO / CONFIG, device='cpu')
    state = {k: v.detach().clone() for k, v in src.model.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    for k in state:
        if k.startswith('projector'):
            state[k] += 0.5 * torch.randn(state[k].shape, generator=gen)
    path = tmp_path_factory.mktemp('chat_run') / 'iter_3.pth'
    torch.save({'state_dict': state, 'meta': {'iter': 3}}, path)
    src.model.load_state_dict(state, strict=False)
    session = ChatSession(src.model, load_image(REPO / IMAGE), image_processor=src.image_processor,
                          pad_to_square=src.pad_to_square, max_new_tokens=8)
    answers = [session.ask('What colour is the shape?'), session.ask('Where is it?')]
    return path, answers


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'tools/chat.py', *args], cwd=REPO, env=ENV, input=stdin,
                          capture_output=True, text=True, timeout=300)


def _answers(stdout: str) -> list[str]:
    return [line[3:] for line in stdout.splitlines() if line.startswith('A: ')]


def test_one_shot_answer_is_printed_after_the_model_source(checkpoint_and_answers):
    ckpt, expected = checkpoint_and_answers
    proc = _run([CONFIG, str(ckpt), '--image', IMAGE, '--question', 'What colour is the shape?',
                 '--max-new-tokens', '8', '--device', 'cpu'])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(('chat: ', 'A: '))]
    assert lines[0].startswith('chat: source=') and f'checkpoint={ckpt}' in lines[0]  # resolved args first
    source = next(i for i, line in enumerate(lines) if line.startswith('chat: model source: '))
    assert f'+ checkpoint {ckpt}' in lines[source] and 'LLaVAModel' in lines[source]
    assert _answers(proc.stdout) == expected[:1]  # the same greedy answer as in-process
    assert next(i for i, line in enumerate(lines) if line.startswith('A: ')) > source


def test_piped_session_keeps_history_and_stops_at_an_empty_line(checkpoint_and_answers):
    ckpt, expected = checkpoint_and_answers
    proc = _run([CONFIG, str(ckpt), '--image', IMAGE, '--max-new-tokens', '8', '--device', 'cpu'],
                stdin='What colour is the shape?\nWhere is it?\n\nHow many shapes are there?\n')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert _answers(proc.stdout) == expected  # two turns (the second sees the first), nothing after the empty line


def test_bad_input_exits_non_zero_with_a_clear_error(tiny_assets, tmp_path, capsys):
    main = _chat_main()
    assert main([CONFIG, '--image', str(tmp_path / 'missing.png'), '--question', 'Hi?']) == 1
    assert "--image '" in capsys.readouterr().err
    assert main([CONFIG, '--image', IMAGE, '--temperature', '-1', '--question', 'Hi?']) == 1
    assert '--temperature must be >= 0' in capsys.readouterr().err
    assert main([str(tmp_path), '--image', IMAGE, '--question', 'Hi?']) == 1
    assert 'without config.json' in capsys.readouterr().err
    (tmp_path / 'notes.txt').write_text('x')
    assert main([str(tmp_path / 'notes.txt'), '--image', IMAGE]) == 1
    assert 'neither a config' in capsys.readouterr().err
    assert main([CONFIG, str(tmp_path / 'iter_9.pth'), '--image', IMAGE]) == 1
    err = capsys.readouterr().err
    assert 'iter_9.pth' in err and 'does not exist' in err


def test_hf_dir_with_a_checkpoint_is_refused(tiny_assets, tmp_path):
    from mllm_align.engine.vqa_eval import load_model_source
    (tmp_path / 'config.json').write_text('{"model_type": "llava"}')
    with pytest.raises(ValueError, match='HF model directory, which holds its weights'):
        load_model_source(tmp_path, tmp_path / 'iter_1.pth')
