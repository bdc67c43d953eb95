"""expand2square and process_images (HF image processors, no torchvision)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BitImageProcessor, CLIPImageProcessor, SiglipImageProcessor

from mllm_align.data import background_color, expand2square, process_images


def clip() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={'shortest_edge': 32}, crop_size={'height': 32, 'width': 32})


def test_expand2square_centres_the_image():
    wide = Image.new('RGB', (40, 20), (255, 0, 0))
    sq = expand2square(wide, (1, 2, 3))
    assert sq.size == (40, 40)
    arr = np.asarray(sq)
    assert (arr[10:30] == [255, 0, 0]).all()  # rows 10..29 hold the image
    assert (arr[:10] == [1, 2, 3]).all() and (arr[30:] == [1, 2, 3]).all()
    tall = expand2square(Image.new('RGB', (10, 30), (0, 255, 0)), (0, 0, 0))
    arr = np.asarray(tall)
    assert tall.size == (30, 30) and (arr[:, 10:20] == [0, 255, 0]).all() and (arr[:, :10] == 0).all()
    square = Image.new('RGB', (8, 8))
    assert expand2square(square, (0, 0, 0)) is square


def test_background_is_processor_mean():
    assert background_color(clip()) == tuple(int(x * 255) for x in clip().image_mean)
    assert background_color(SiglipImageProcessor()) == (127, 127, 127)
    assert background_color(object()) == (127, 127, 127)


@pytest.mark.parametrize('mode', ['RGB', 'L', 'RGBA', 'P', 'CMYK'])
def test_process_images_any_mode(mode):
    image = Image.new(mode, (40, 20))
    out = process_images([image, Image.new('RGB', (16, 16), (9, 9, 9))], clip())
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32


@pytest.mark.parametrize('proc', [
    SiglipImageProcessor(size={'height': 24, 'width': 24}),
    BitImageProcessor(size={'shortest_edge': 24}, crop_size={'height': 24, 'width': 24}),
])
def test_other_processors(proc):
    out = process_images([Image.new('RGB', (30, 10), (10, 200, 30))], proc)
    assert out.shape == (1, 3, 24, 24) and out.dtype == torch.float32


def test_padding_border_is_normalised_to_zero():
    """The pad colour is the normalisation mean, so the padded band is ≈ 0 after normalising."""
    proc = clip()
    out = process_images([Image.new('RGB', (64, 16), (255, 255, 255))], proc, pad_to_square=True)
    assert out[0, :, 0, :].abs().max() < 0.02  # top row: padding
    assert out[0, :, 16, :].min() > 1.0  # middle row: white image
    stretched = process_images([Image.new('RGB', (64, 16), (255, 255, 255))], proc, pad_to_square=False)
    assert stretched[0, :, 0, :].min() > 1.0


def test_process_images_needs_images():
    with pytest.raises(ValueError, match='at least one image'):
        process_images([], clip())


def test_process_images_scales_16_bit_and_composites_alpha():
    """Images handed over in memory (chat-eval, MIR probes) get the same RGB rules as files."""
    proc = clip()
    deep = Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16))  # I;16 white
    half = Image.fromarray(np.full((16, 16), 32896, dtype=np.uint16))  # 32896 / 257 = 128
    ref = process_images([Image.new('RGB', (16, 16), (255, 255, 255)), Image.new('RGB', (16, 16), (128,) * 3)], proc)
    torch.testing.assert_close(process_images([deep, half], proc), ref, rtol=0, atol=0)
    clear = Image.new('RGBA', (16, 16), (0, 0, 0, 0))
    torch.testing.assert_close(process_images([clear], proc)[0], ref[0], rtol=0, atol=0)  # white
    assert process_images([clear], proc, alpha_background='mean').abs().max() < 0.02
    fill = process_images([clear], proc, alpha_background=(128, 128, 128))
    torch.testing.assert_close(fill[0], ref[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match='alpha_background'):
        process_images([clear], proc, alpha_background=(1, 2))
