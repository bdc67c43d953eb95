"""CoLVA's tiny twins end to end through ``tools/dist.sh`` with 2 processes: adapter pre-training, then LoRA SFT from
its last checkpoint, killed and resumed to bitwise the same weights, then exported and reloaded with equal logits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mllm_align.testing.runs import assert_bitwise_equal, checkpoints, run, run_env, train_command

PRETRAIN = 'projects/colva/configs/pretrain/qwen2vl_2b_radio_align_pretrain_tiny_cpu.py'
SFT = 'projects/colva/configs/finetune/qwen2vl_2b_radio_match_sft_tiny_cpu.py'
BASES = {  # base → (pre-training twin, SFT twin)
    'qwen2_vl': (PRETRAIN, SFT),
    'internvl2': ('projects/colva/configs/pretrain/internvl2_phi3_4b_radio_align_pretrain_tiny_cpu.py',
                  'projects/colva/configs/finetune/internvl2_phi3_4b_radio_match_sft_tiny_cpu.py'),
}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def colva_assets(tiny_assets):
    from mllm_align.testing.tiny_assets import build_tiny_qwen2_vl
    from mllm_align.testing.tiny_colva_data import build_tiny_colva_data
    from mllm_align.testing.tiny_internvl import build_tiny_internvl
    from mllm_align.testing.tiny_radio import build_tiny_radio
    build_tiny_qwen2_vl(tiny_assets.root)
    build_tiny_internvl(tiny_assets.root)
    build_tiny_radio(tiny_assets.root)
    return build_tiny_colva_data(tiny_assets.root)


@pytest.mark.slow
@pytest.mark.parametrize('base', sorted(BASES))
def test_pretrain_then_sft_kill_resume_and_export(base, colva_assets, tmp_path, monkeypatch):
    from mllm_align.engine.checkpoint import load_checkpoint_file

    PRETRAIN, SFT = BASES[base]  # noqa: N806 (the twins of this base)
    pre = tmp_path / 'pre'
    code, out = run(train_command(pre, 2, 6, 3, config=PRETRAIN), tmp_path / 'pre.log', run_env())
    assert code == 0, out[-4000:]
    state = load_checkpoint_file(pre / 'iter_6.pth')['state_dict']
    assert state and all(k.startswith('adapter.') for k in state)  # only the adapter trains in stage 1

    # Stage 2 from stage 1's adapter: reference run, a run killed in iteration 3, its resume.
    hand_off = (f'pretrained_adapter_pth={pre / "iter_6.pth"}',)
    iters, interval, at = 4, 2, 3
    ref, work = tmp_path / 'ref', tmp_path / 'run'
    code, out = run(train_command(ref, 2, iters, interval, config=SFT, cfg_options=hand_off), tmp_path / 'ref.log',
                    run_env())
    assert code == 0, out[-4000:]
    assert 'Loaded the object adapter' in out
    code, out = run(train_command(work, 2, iters, interval, config=SFT, cfg_options=hand_off),
                    tmp_path / 'crash.log', run_env(MLLM_ALIGN_CRASH_AT_ITER=str(at)))
    assert code != 0 and f'iter_{iters}.pth' not in checkpoints(work), out[-2000:]
    code, out = run(train_command(work, 2, iters, interval, '--resume', config=SFT, cfg_options=hand_off),
                    tmp_path / 'resume.log', run_env())
    assert code == 0, out[-4000:]
    a, b = load_checkpoint_file(ref / f'iter_{iters}.pth'), load_checkpoint_file(work / f'iter_{iters}.pth')
    assert a['state_dict'] and all('lora_' in k for k in a['state_dict'])  # adapter and expert stay frozen
    assert_bitwise_equal(a['state_dict'], b['state_dict'], 'weights')
    assert_bitwise_equal(a['optimizer']['state'], b['optimizer']['state'], 'optimizer')

    # Export the trained SFT model and reload it: the same logits on a real batch of the twin's data.
    from mmengine.config import Config
    from mmengine.registry import MODELS

    from mllm_align.data.collate import colva_collate_fn
    from mllm_align.engine.build import load_config
    from mllm_align.models.colva import load_colva_export

    monkeypatch.chdir(REPO)
    cfg = load_config(str(REPO / SFT), {'pretrained_adapter_pth': str(pre / 'iter_6.pth'),
                                        'pretrained_pth': str(ref / f'iter_{iters}.pth')})
    model = MODELS.build(cfg.model).eval()
    out_dir = model.export_hf(tmp_path / 'export')
    with pytest.raises(ValueError, match='trust_remote_code=True'):  # RADIO's code (and InternVL2's) runs only
        load_colva_export(out_dir)                                   # when the caller says so
    loaded = load_colva_export(out_dir, trust_remote_code=True)
    from mllm_align.data.mmvm_sft import MMVMSFTDataset
    ds_cfg = Config(cfg.train_dataloader.dataset.datasets[0])
    ds_cfg.pop('type')
    dataset = MMVMSFTDataset(**ds_cfg)
    batch = colva_collate_fn([dataset[0], dataset[3]], pad_token_id=model.pad_token_id)['data']
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch, mode='tensor'), model(batch, mode='tensor'), rtol=1e-5, atol=1e-5)
        pred = loaded(batch, mode='predict')
    assert len(pred) == 2 and all(isinstance(p['prediction'], str) for p in pred)


@pytest.mark.slow
def test_zero3_pretrain_then_sft_from_its_sharded_checkpoint(colva_assets, tmp_path):
    pytest.importorskip('deepspeed')
    from mllm_align.engine.checkpoint import load_checkpoint_file

    pre, sft = tmp_path / 'pre', tmp_path / 'sft'
    code, out = run(train_command(pre, 2, 2, 2, '--deepspeed', 'deepspeed_zero3', config=PRETRAIN),
                    tmp_path / 'pre.log', run_env())
    assert code == 0, out[-4000:]
    assert (pre / 'iter_2.pth').is_dir()  # a DeepSpeed checkpoint: a directory of shards
    code, out = run(train_command(sft, 2, 2, 2, '--deepspeed', 'deepspeed_zero3', config=SFT,
                                  cfg_options=(f'pretrained_adapter_pth={pre / "iter_2.pth"}',)),
                    tmp_path / 'sft.log', run_env())
    assert code == 0, out[-4000:]
    assert 'Loaded the object adapter' in out
    adapter = {k: v for k, v in load_checkpoint_file(pre / 'iter_2.pth')['state_dict'].items()}
    assert adapter and all(k.startswith('adapter.') for k in adapter)
