"""Benchmark: CoLVA's adapter pre-training step against the base's own forward, and SFT memory with checkpointing.

    python benchmarks/bench_colva_step.py               # ~2-3 min on 2 CPU cores
    python benchmarks/bench_colva_step.py --threads 2

A random Qwen2-VL at a mid size (hidden 512, 4 decoder layers, vision width 256 × 4 blocks; built once into a
temporary directory, nothing downloaded) and, as the vision expert, the real DINOv2-S/14 of
``data/prepare_real.py`` at 448 px (a 32×32 grid of 384-d features; the tiny RADIO stand-in at 256 px when it is
absent). One batch of 2 SA-1B-format items (``data/real/sa1b_mini``, else the tiny drawn set), both directions
(2 expert and 2 base views per item). Variants, each in fresh processes (``_common.run_variants``):

* ``base_vision``  the base's plain forward on the batch: ``encode_images`` (vision transformer + merger), no grad.
* ``expert``       the expert's forward alone on the batch's expert views, no grad.
* ``pretrain``     the pre-training step: expert + adapter + pooling on both grids + the contrastive loss,
                   forward and backward (only the adapter trains; the LLM never runs).
* ``sft``, ``sft_gc``  an SFT step (LoRA r=16 on the LLM, object tokens filled) on 2 matching cases from
                   ``MMVMSFTDataset``, gradient checkpointing off / on: peak memory is the point.

The ratio ``pretrain`` / (``base_vision`` + ``expert``) says what the adapter, pooling and loss add to the two
forwards the step cannot avoid. Prints a markdown table for ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, measure_step, print_report, run_variants  # noqa: E402

VARIANTS = ('base_vision', 'expert', 'pretrain', 'sft', 'sft_gc')


def build_base(out_dir: Path) -> None:
    """A random mid-size Qwen2-VL with the tiny Qwen2-VL's tokenizer and processor, saved into ``out_dir``."""
    import torch
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    tiny = REPO / 'data' / 'tiny' / 'qwen2_vl'
    tok = AutoTokenizer.from_pretrained(str(tiny))
    src = Qwen2VLConfig.from_pretrained(str(tiny))
    text = src.text_config.to_dict()
    text.update(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=2)
    text.pop('layer_types', None)
    text['rope_scaling'] = {'type': 'mrope', 'mrope_section': [8, 12, 12]}  # sums to head_dim / 2 = 32
    vision = src.vision_config.to_dict()
    vision.update(depth=4, embed_dim=256, hidden_size=512, num_heads=4, patch_size=14)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=src.image_token_id,
                           video_token_id=src.video_token_id, vision_start_token_id=src.vision_start_token_id,
                           vision_end_token_id=src.vision_end_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    Qwen2VLImageProcessor(min_pixels=64 * 28 * 28, max_pixels=256 * 28 * 28, patch_size=14, merge_size=2,
                          temporal_patch_size=2).save_pretrained(out_dir)


def expert_cfg() -> dict:
    from mllm_align.models.vision_expert import HFVisionExpert
    dinov2 = REPO / 'data' / 'real' / 'dinov2_small'
    if (dinov2 / 'config.json').is_file():
        return dict(type=HFVisionExpert, path=str(dinov2), image_size=448)
    return dict(type=HFVisionExpert, path=str(REPO / 'data' / 'tiny' / 'radio'), image_size=256,
                trust_remote_code=True)


def child(variant: str, measure: str, base_dir: str) -> None:
    import torch

    from mllm_align.constants import VPT_TOKEN
    from mllm_align.data import MMVMSFTDataset, SA1BPseudoVideoDataset, colva_collate_fn
    from mllm_align.models import CoLVAModel, Qwen2VLModel, load_tokenizer
    from mllm_align.testing.tiny_colva_data import build_tiny_colva_data

    torch.manual_seed(0)
    tokenizer = dict(type=load_tokenizer, path=base_dir, extra_special_tokens=[VPT_TOKEN])
    sft = variant.startswith('sft')
    base = dict(type=Qwen2VLModel, path=base_dir, tokenizer=tokenizer, freeze_projector=True,
                gradient_checkpointing=variant == 'sft_gc',
                llm_lora=dict(r=16, lora_alpha=32, target_modules=None) if sft else None)
    model = CoLVAModel(base=base, expert=expert_cfg(), stage='sft' if sft else 'pretrain').train()
    E, g = model.expert.image_size, model.expert.grid_size
    tiny = build_tiny_colva_data(REPO / 'data' / 'tiny')
    if sft:
        dataset = MMVMSFTDataset([tiny['choices']], model.tokenizer, 'qwen2_vl', model.base.image_processor,
                                 expert_image_size=E, expert_grid=g, image_root=tiny['mmvm_sft'],
                                 pad_image_to_square=False)
        batch = colva_collate_fn([dataset[0], dataset[1]], pad_token_id=model.pad_token_id)['data']
    else:
        real = REPO / 'data' / 'real' / 'sa1b_mini'
        root = real if (real / 'sa_1.json').is_file() else tiny['sa1b']
        dataset = SA1BPseudoVideoDataset(root, model.base.image_processor, expert_image_size=E, expert_grid=g,
                                         view_size=448, max_objects=16, on_bad_sample='skip')
        batch = colva_collate_fn([dataset[0], dataset[1]])['data']
    trainable = [p for p in model.parameters() if p.requires_grad]

    def zero_grad() -> None:
        for p in trainable:
            p.grad = None

    if variant in ('base_vision', 'expert'):
        def step():
            with torch.no_grad():
                if variant == 'base_vision':
                    feats = model.base.encode_images(batch['pixel_values'], image_grid_thw=batch['image_grid_thw'])
                    out = sum(f.sum() for f in feats)
                else:
                    out = model.expert(batch['expert_pixel_values']).sum()
            return out.requires_grad_()  # a leaf to call backward on: nothing to differentiate
    elif variant == 'pretrain':
        def step():
            return model(batch, mode='loss')['loss_contrastive']
    else:
        def step():
            return model(batch, mode='loss')['loss_lm']
    measure_step(step, zero_grad, measure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--child', choices=VARIANTS)
    parser.add_argument('--measure', choices=('memory', 'time'))
    parser.add_argument('--base-dir')
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    if args.child:
        import torch
        torch.set_num_threads(args.threads)
        child(args.child, args.measure, args.base_dir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        build_base(Path(tmp))
        results = run_variants(__file__, list(VARIANTS), {'base-dir': tmp}, args.threads)
    print_report(results, 'base_vision', args.threads)
    forwards = results['base_vision']['step_s'] + results['expert']['step_s']
    ratio = results['pretrain']['step_s'] / forwards
    print(f'\npretrain step / (base vision forward + expert forward) = {ratio:.2f}x; '
          f'SFT peak memory with checkpointing / without = '
          f'{results["sft_gc"]["peak_mib"] / results["sft"]["peak_mib"]:.2f}x')


if __name__ == '__main__':
    main()
