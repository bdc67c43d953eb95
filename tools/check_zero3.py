"""Check on CPU that the alignment plug-ins train the same under DeepSpeed ZeRO-3 as without it.

    python tools/check_zero3.py                                  # 1 process: visual words + pif, MoCa, CAL
    python -m torch.distributed.run --nproc_per_node 2 tools/check_zero3.py --plugins vw moca
    python tools/check_zero3.py --no-strict                      # keep DeepSpeed's own parameter discovery

Builds the tiny LLaMA + CLIP LLaVAModel (LLM trainable) twice, trains one copy plainly and one
through a DeepSpeed ZeRO-3 engine (fp32, SGD, DeepSpeed's CPU accelerator, gloo) for --steps steps
on the same batches, and compares losses, full gradients and updated weights
(mllm_align/testing/zero3.py explains the settings). Exits with status 1 if a difference exceeds
--atol.

Needs deepspeed (pinned in requirements-dev.txt, so `bash tools/test.sh`'s venv has it):

    source tools/env.sh && python tools/check_zero3.py

The first run compiles DeepSpeed's small shared-memory communication op (about a minute, cached
in ~/.cache/torch_extensions); the tiny assets come from ``python tools/build_tiny_assets.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault('DS_ACCELERATOR', 'cpu')  # before deepspeed is imported

from mllm_align.testing.zero3 import PLUGINS, run_zero3_check  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--plugins', nargs='+', choices=PLUGINS, default=['pif', 'moca', 'cal'],
                        help="plug-ins on the model: 'vw', 'pif' (visual words + pseudo image features), "
                             "'detach' (visual words, detach_target), 'moca', 'cal', 'gc' (gradient "
                             'checkpointing in the LLM) (default: pif moca cal)')
    parser.add_argument('--steps', type=int, default=2, help='SGD steps to compare (default 2)')
    parser.add_argument('--lr', type=float, default=0.5, help='SGD learning rate (default 0.5: visible updates)')
    parser.add_argument('--atol', type=float, default=1e-5,
                        help='largest accepted absolute difference of a loss, gradient or weight (default 1e-5)')
    parser.add_argument('--no-strict', dest='strict', action='store_false',
                        help="keep DeepSpeed's discovery of parameters read through module attributes "
                             '(default: off, so only the plug-ins\' own registration is tested)')
    parser.add_argument('--tiny-root', default=str(REPO / 'data' / 'tiny'),
                        help='tiny assets directory (default data/tiny, built if missing)')
    parser.add_argument('--json', dest='json_out', default=None, help='also write the result to this JSON file')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get('RANK', '0'))
    if rank == 0:
        print(f'check_zero3: plugins={args.plugins} steps={args.steps} lr={args.lr} atol={args.atol} '
              f'strict={args.strict} tiny_root={args.tiny_root}', flush=True)
    if not (Path(args.tiny_root) / 'llm' / 'llama').is_dir():
        from mllm_align.testing.tiny_assets import build_tiny_assets
        build_tiny_assets(Path(args.tiny_root))
    result = run_zero3_check(args.tiny_root, tuple(args.plugins), steps=args.steps, lr=args.lr,
                             strict=args.strict)
    ok = max(result['loss'], result['grad'], result['param']) <= args.atol
    result['ok'] = ok
    print(f'[rank {rank}] ' + json.dumps(result), flush=True)
    if args.json_out and rank == 0:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + '\n')
    if rank == 0:
        print(f"check_zero3: {'OK' if ok else 'MISMATCH'} — max |Δ| loss {result['loss']:.2e}, "
              f"grad {result['grad']:.2e} (max |grad| {result['grad_scale']:.2e}), "
              f"weights after {result['steps']} steps {result['param']:.2e}, "
              f"{result['num_params']} trained tensors, {result['world_size']} process(es)", flush=True)
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        # Every rank waits for the others, then tears gloo down: a rank leaving with the group alive can abort
        # ("terminate called without an active exception") while another still talks to it.
        dist.barrier()
        dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
