"""The checkpoint runner (mllm_align/evaluation/runner.py) with a toy model and a toy evaluator whose
numbers are worked out by hand: one build, weight swap per checkpoint, skip on re-run, settings
mismatch, torn and incomplete checkpoints, DeepSpeed directories, HF directories via the loader registry;
and the import rule that keeps models/ free of plug-in imports."""
from __future__ import annotations

import ast
import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mllm_align.evaluation import (
    ModelEvaluator,
    SettingsMismatch,
    discover_checkpoints,
    evaluate_checkpoints,
)
from mllm_align.models.base import MultimodalModel
from mllm_align.models.hf_llava import _HF_DIR_LOADERS, register_hf_dir_loader

REPO = Path(__file__).resolve().parents[2]
X = torch.tensor([[1.0, 1.0], [2.0, 0.0]])  # the toy data: two samples


class ToyModel(MultimodalModel):
    """y = w · x with a trained ``w [1, 2]`` and a frozen ``scale`` (not in checkpoints)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(2, 1, bias=False)
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)
        self.register_frozen_keys_hook()


class ToyEvaluator(ModelEvaluator):
    """Mean of ``factor · model.w(x)`` over the toy data, in batches of one sample; ``passes`` passes."""

    name = 'toy'

    def __init__(self, factor: float = 1.0, passes: int = 1) -> None:
        super().__init__()
        self.factor = factor
        self.num_passes = passes  # type: ignore[misc]
        self.passes_seen: list[int] = []

    def settings(self) -> dict[str, Any]:
        return dict(factor=self.factor)

    def num_samples(self) -> int:
        return len(X)

    def batches(self, model: MultimodalModel) -> list[torch.Tensor]:
        return [X[i:i + 1] for i in range(len(X))]

    def begin_pass(self, index: int) -> None:
        self.passes_seen.append(index)

    def run_batch(self, model: MultimodalModel, data_batch: torch.Tensor) -> list[float]:
        assert not model.training and not torch.is_grad_enabled()
        return (model.w(data_batch)[:, 0] * self.factor).tolist()

    def process(self, data_batch: Any, outputs: list[float]) -> None:
        self.results.extend(outputs)

    def compute_metrics(self, results: list) -> dict[str, Any]:
        return dict(mean_output=sum(results) / len(results), num_outputs=len(results))


def _save(path: Path, w: list[float] | None, iteration: int) -> None:
    state = {} if w is None else {'w.weight': torch.tensor([w])}
    torch.save({'state_dict': state, 'meta': {'iter': iteration}}, path)


@pytest.fixture
def work(tmp_path):
    work = tmp_path / 'run'
    work.mkdir()
    _save(work / 'iter_1.pth', [1.0, 2.0], 1)  # outputs 3, 2 → mean 2.5
    _save(work / 'iter_3.pth', [3.0, -1.0], 3)  # outputs 2, 6 → mean 4.0
    (work / 'notes.txt').write_text('not a checkpoint')
    (work / '.iter_5.pth.123.tmp').write_bytes(b'half-written')  # the atomic writer's temp file: ignored
    return work


class Builds:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> ToyModel:
        self.count += 1
        return ToyModel()


def test_series_scored_by_hand_then_skipped(work, tmp_path, capsys):
    builds = Builds()
    out = tmp_path / 'out'
    ev = ToyEvaluator(passes=2)
    records = evaluate_checkpoints(work, ev, build_model=builds, out_dir=out, progress=False,
                                   model_settings=dict(config='toy.py'))['toy']
    assert builds.count == 1  # built once, weights swapped per checkpoint
    assert [r['iteration'] for r in records] == [1, 3]
    # two passes over two samples: four outputs per checkpoint, the mean unchanged
    assert [r['mean_output'] for r in records] == [pytest.approx(2.5), pytest.approx(4.0)]
    assert [r['num_outputs'] for r in records] == [4, 4] and ev.passes_seen == [0, 1, 0, 1]
    doc = json.loads((out / 'toy.json').read_text())
    assert doc['format'] == 'mllm_align.eval.toy/1' and doc['settings'] == dict(factor=1.0, config='toy.py')
    with open(out / 'toy.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['iteration'], r['mean_output']) for r in rows] == [('1', '2.5'), ('3', '4')]
    assert (out / 'toy_curve.png').read_bytes()[:4] == b'\x89PNG'
    assert not [p.name for p in out.iterdir() if p.name.startswith('.')]  # no temp files left

    # re-run: nothing is built or recomputed
    again = evaluate_checkpoints(work, ToyEvaluator(), build_model=builds, out_dir=out, progress=False,
                                 model_settings=dict(config='toy.py'))['toy']
    assert builds.count == 1 and [r['finished_at'] for r in again] == [r['finished_at'] for r in records]
    assert 'iter_3.pth: already in' in capsys.readouterr().out

    # a rewritten checkpoint is recomputed, the other one kept
    _save(work / 'iter_3.pth', [0.0, 1.0], 3)  # outputs 1, 0 → mean 0.5
    os.utime(work / 'iter_3.pth', ns=(10**18, 10**18))
    third = evaluate_checkpoints(work, ToyEvaluator(), build_model=builds, out_dir=out, progress=False,
                                 model_settings=dict(config='toy.py'))['toy']
    assert builds.count == 2 and third[0]['finished_at'] == records[0]['finished_at']
    assert third[1]['mean_output'] == pytest.approx(0.5)

    # other settings: refused, naming the difference; --overwrite recomputes everything
    with pytest.raises(SettingsMismatch, match=r'factor: 1\.0 → 2\.0'):
        evaluate_checkpoints(work, ToyEvaluator(2.0), build_model=builds, out_dir=out, progress=False,
                             model_settings=dict(config='toy.py'))
    redone = evaluate_checkpoints(work, ToyEvaluator(2.0), build_model=builds, out_dir=out, progress=False,
                                  overwrite=True, model_settings=dict(config='toy.py'))['toy']
    assert [r['mean_output'] for r in redone] == [pytest.approx(5.0), pytest.approx(1.0)]


class TensorToyEvaluator(ToyEvaluator):
    """The toy evaluator whose outputs are tensors (4 bytes each), counting the model's forward passes."""

    def __init__(self, passes: int, budget: int) -> None:
        super().__init__(passes=passes)
        self.replay_budget_bytes = budget
        self.forwards = 0

    def run_batch(self, model: MultimodalModel, data_batch: torch.Tensor) -> list[torch.Tensor]:
        self.forwards += 1
        return list(model.w(data_batch)[:, 0] * self.factor)

    def process(self, data_batch: Any, outputs: list[torch.Tensor]) -> None:
        self.results.extend(float(o) for o in outputs)


@pytest.mark.parametrize('passes, budget, forwards', [
    (3, 1 << 20, 2),  # both samples kept after pass 0: the later passes replay them
    (3, 4, 6),  # room for one output only: dropped, every pass runs the model (2 samples × 3 passes)
    (3, 0, 6),  # replay off
    (1, 1 << 20, 2),  # one pass: nothing to replay
])
def test_later_passes_replay_the_first_within_the_budget(work, tmp_path, passes, budget, forwards):
    ev = TensorToyEvaluator(passes, budget)
    records = evaluate_checkpoints(work / 'iter_1.pth', ev, build_model=Builds(), out_dir=tmp_path / 'o',
                                   progress=False, model_settings=dict(config='toy.py'))['toy']
    assert ev.forwards == forwards and ev.passes_seen == list(range(passes))
    assert records[0]['mean_output'] == pytest.approx(2.5) and records[0]['num_outputs'] == 2 * passes


def test_a_given_model_is_used_and_its_mode_restored(work, tmp_path):
    model = ToyModel().train()
    records = evaluate_checkpoints(work / 'iter_1.pth', ToyEvaluator(), model=model, out_dir=tmp_path / 'o',
                                   progress=False, plots=False)['toy']
    assert [r['mean_output'] for r in records] == [pytest.approx(2.5)]
    assert model.training and torch.equal(model.w.weight, torch.tensor([[1.0, 2.0]]))
    assert not (tmp_path / 'o' / 'toy_curve.png').exists()
    assert (work / 'toy').exists() is False  # out_dir given: nothing written beside the checkpoints


def test_bad_checkpoints_are_named(work, tmp_path):
    with pytest.raises(ValueError, match='needs the base model'):
        evaluate_checkpoints(work, ToyEvaluator(), out_dir=tmp_path / 'o0', progress=False)
    _save(work / 'iter_5.pth', None, 5)  # no weights at all
    with pytest.raises(ValueError, match=r'iter_5\.pth holds no weights'):
        evaluate_checkpoints(work, ToyEvaluator(), build_model=ToyModel, out_dir=tmp_path / 'o1', progress=False)
    torch.save({'state_dict': {'other.weight': torch.zeros(1)}}, work / 'iter_5.pth')
    with pytest.raises(ValueError, match=r"iter_5\.pth does not match the model built from toy\.py: keys the model "
                                         r"does not have \['other\.weight'\], trained keys missing from the checkpoint "
                                         r"\['w\.weight'\]"):
        evaluate_checkpoints(work, ToyEvaluator(), build_model=ToyModel, out_dir=tmp_path / 'o2', progress=False,
                             source='toy.py')

    # a torn newest checkpoint of a series is skipped with a warning; named on its own, it is an error
    full = (work / 'iter_3.pth').read_bytes()
    (work / 'iter_5.pth').write_bytes(full[:len(full) // 2])
    assert [r.name for r in discover_checkpoints(work)] == ['iter_1.pth', 'iter_3.pth']
    records = evaluate_checkpoints(work, ToyEvaluator(), build_model=ToyModel, out_dir=tmp_path / 'o3',
                                   progress=False, plots=False)['toy']
    assert [r['iteration'] for r in records] == [1, 3]
    with pytest.raises(ValueError, match=r'iter_5\.pth cannot be scored: torn'):
        discover_checkpoints(work / 'iter_5.pth')
    with pytest.raises(ValueError, match=r'iter_5\.pth cannot be scored: torn'):
        evaluate_checkpoints(work / 'iter_5.pth', ToyEvaluator(), build_model=ToyModel, out_dir=tmp_path / 'o4',
                             progress=False)
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ValueError, match=r'holds no iter_\*\.pth'):
        discover_checkpoints(empty)


def test_deepspeed_directories_are_found_and_checked(tmp_path):
    """A DeepSpeed ``iter_N.pth/`` directory counts as a checkpoint; one missing a rank's shard does not."""
    work = tmp_path / 'ds'
    for n, ranks in ((2, (0, 1)), (4, (0,)), (6, (1,))):
        tag = work / f'iter_{n}.pth'
        tag.mkdir(parents=True)
        torch.save({'module': {}}, tag / 'mp_rank_00_model_states.pt')
        for r in ranks:
            torch.save({'optimizer_state_dict': {}}, tag / f'zero_pp_rank_{r}_mp_rank_00_optim_states.pt')
    refs = discover_checkpoints(work)  # iter_6 lacks rank 0's optimizer shard
    assert [(r.name, r.iteration, r.kind) for r in refs] == [('iter_2.pth', 2, 'pth'), ('iter_4.pth', 4, 'pth')]
    key = refs[0].key()  # over the directory's files, so a rewritten shard is noticed
    sizes = sum(p.stat().st_size for p in (work / 'iter_2.pth').iterdir())
    assert key['size'] == sizes
    assert discover_checkpoints(work / 'iter_4.pth')[0].iteration == 4
    with pytest.raises(ValueError, match=r"rank\(s\) \[0\] are missing"):
        discover_checkpoints(work / 'iter_6.pth')


def test_hf_directories_load_through_the_registry(tmp_path):
    hf = tmp_path / 'toy_hf'
    hf.mkdir()
    (hf / 'config.json').write_text(json.dumps({'model_type': 'toy_mm'}))
    with pytest.raises(ValueError, match="HF 'toy_mm' directory, which no loader is registered for"):
        discover_checkpoints(hf)
    calls = []

    def load_toy(path, *, template=None, dtype=None, device='cpu'):
        calls.append((Path(path), template, dtype, str(device)))
        model = ToyModel()
        with torch.no_grad():
            model.w.weight.copy_(torch.tensor([[1.0, 2.0]]))
        return model

    register_hf_dir_loader('toy_mm', load_toy)
    try:
        with pytest.raises(ValueError, match='already has a loader'):
            register_hf_dir_loader('toy_mm', lambda *a, **k: None)
        records = evaluate_checkpoints(hf, ToyEvaluator(), template='plain', device='cpu', progress=False)['toy']
        assert calls == [(hf, 'plain', None, 'cpu')]
        assert records[0]['iteration'] is None and records[0]['mean_output'] == pytest.approx(2.5)
        assert (tmp_path / 'toy_hf_toy' / 'toy.json').is_file()  # default out dir beside the HF directory
    finally:
        _HF_DIR_LOADERS.pop('toy_mm', None)


def test_evaluator_names_must_differ_and_be_identifiers(work):
    with pytest.raises(ValueError, match='names must differ'):
        evaluate_checkpoints(work, [ToyEvaluator(), ToyEvaluator()], build_model=ToyModel, progress=False)

    class Unnamed(ToyEvaluator):
        name = 'a b'

    with pytest.raises(ValueError, match='short identifier'):
        Unnamed()


# ------------------------------------------------------------------ layering
OWN_MODEL_FILES = ('hf_llava.py', 'hidden_states.py', 'export.py', 'hf_processor.py')


def _imported_modules(path: Path) -> list[str]:
    """Absolute names of every module a file imports (any depth, relative imports resolved)."""
    package = ['mllm_align', *path.parent.relative_to(REPO / 'mllm_align').parts]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = '.'.join(base + ([node.module] if node.module else []))
            names += [module] + [f'{module}.{a.name}' for a in node.names]
    return names


@pytest.mark.parametrize('name', OWN_MODEL_FILES)
def test_model_files_import_no_plugin(name):
    """models/ reaches plug-ins through the AlignPlugin protocol (export records dotted class paths)."""
    imported = _imported_modules(REPO / 'mllm_align' / 'models' / name)
    assert 'mllm_align.models.base' in ' '.join(_imported_modules(REPO / 'mllm_align' / 'models' / 'hf_llava.py'))
    bad = [m for m in imported if m == 'mllm_align.align' or m.startswith('mllm_align.align.')
           or m.startswith('mllm_align.engine')]
    assert not bad, f'mllm_align/models/{name} imports {bad}'


# ------------------------------------------------------------------ MIR on an HF export
def test_mir_of_an_hf_export_equals_the_source_models(tiny_assets, tmp_path):
    """tools/eval_mir.py's path for an HF directory: the registry loads it, MIREvaluator scores it, and the
    numbers equal compute_model_mir of the LLaVAModel it was exported from (plug-in re-attached)."""
    import shutil

    from mllm_align.align import MoCa
    from mllm_align.data.mir_probe import build_mir_probe
    from mllm_align.engine.mir_eval import evaluate_mir
    from mllm_align.models import LLaVAModel, VisionTower, load_image_processor, load_llm, load_tokenizer
    from mllm_align.models.hidden_states import compute_model_mir

    torch.manual_seed(0)
    llm = str(tiny_assets.llm('llama'))
    model = LLaVAModel(llm=dict(type=load_llm, path=llm), visual_encoder=dict(type=VisionTower,
                       path=str(tiny_assets.vision('clip'))), tokenizer=dict(type=load_tokenizer, path=llm),
                       template='plain', plugins=dict(moca=dict(type=MoCa))).eval()
    with torch.no_grad():
        model.moca.v.add_(torch.randn(model.moca.v.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    processor = load_image_processor(str(tiny_assets.vision('clip')))
    out = model.export_hf(tmp_path / 'hf', image_processor=processor)
    images = tmp_path / 'images'
    images.mkdir()
    for src in sorted((tiny_assets.image_folder / 'images').glob('train_*.png'))[:3]:
        shutil.copy(src, images / src.name)
    records = evaluate_mir(out, images=images, eval_num=3, text_max_tokens=32, progress=False, plots=False)
    assert records[0]['iteration'] is None and (tmp_path / 'hf_mir' / 'mir.json').is_file()
    probe = build_mir_probe(images, eval_num=3, image_processor=processor, text_max_tokens=32)
    expected = compute_model_mir(model, probe)
    assert records[0]['per_layer'] == pytest.approx(expected.per_layer, rel=1e-4)
    assert records[0]['mir'] == pytest.approx(expected.mir, rel=1e-5)
