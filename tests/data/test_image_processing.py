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


# ------------------------------------------------------------------------------ CLIP without the processor call
CLIP_L_336 = dict(size={'shortest_edge': 336}, crop_size={'height': 336, 'width': 336},
                  image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])


@pytest.mark.parametrize('settings', [
    CLIP_L_336,  # LLaVA-1.5's tower
    dict(CLIP_L_336, size={'shortest_edge': 224}, crop_size={'height': 224, 'width': 224}),
    dict(CLIP_L_336, size={'shortest_edge': 40}, crop_size={'height': 33, 'width': 31}, resample=2),
])
def test_clip_fast_path_is_bitwise_equal_to_the_processor(settings):
    from mllm_align.data.image_processing import clip_fast_path
    proc = CLIPImageProcessor(**settings)
    fast = clip_fast_path(proc)
    assert fast is not None and clip_fast_path(proc) is fast  # built once per settings
    rng = np.random.default_rng(0)
    for width, height in [(640, 480), (480, 640), (500, 333), (1024, 768), (336, 336), (77, 1000), (5, 9)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        got = process_images([image], proc, pad_to_square=width != 500)  # fast path
        padded = expand2square(image, background_color(proc)) if width != 500 else image
        want = proc([padded], return_tensors='np')['pixel_values']
        assert got.dtype == torch.float32 and got.is_contiguous()
        np.testing.assert_array_equal(got.numpy(), want)  # bitwise, not to a tolerance


def test_clip_fast_path_follows_a_changed_processor_and_leaves_it_saveable(tmp_path):
    from mllm_align.data.image_processing import clip_fast_path
    proc = CLIPImageProcessor(**CLIP_L_336)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    process_images([image], proc)
    proc.save_pretrained(tmp_path)  # the processor carries nothing of ours (this failed when the path was kept on it)
    assert CLIPImageProcessor.from_pretrained(tmp_path).to_dict() == proc.to_dict()
    proc.size, proc.crop_size = {'shortest_edge': 224}, {'height': 224, 'width': 224}  # changed after first use
    assert clip_fast_path(proc).crop_h == 224
    want = proc([expand2square(image, background_color(proc))], return_tensors='np')['pixel_values']
    np.testing.assert_array_equal(process_images([image], proc).numpy(), want)


def test_clip_fast_path_only_for_settings_it_reproduces(monkeypatch):
    from mllm_align.data.image_processing import clip_fast_path
    assert clip_fast_path(CLIPImageProcessor(**CLIP_L_336)) is not None
    for settings in [dict(do_center_crop=False), dict(do_normalize=False), dict(do_rescale=False),
                     dict(size={'height': 336, 'width': 336}), dict(crop_size={'height': 400, 'width': 400}),
                     dict(image_mean=0.5, image_std=0.5)]:
        assert clip_fast_path(CLIPImageProcessor(**dict(CLIP_L_336, **settings))) is None, settings
    assert clip_fast_path(SiglipImageProcessor()) is None and clip_fast_path(BitImageProcessor()) is None

    class Custom(CLIPImageProcessor):
        pass
    assert clip_fast_path(Custom(**CLIP_L_336)) is None
    # a processor the path does not cover is still called, and tiny images always go to it
    proc = CLIPImageProcessor(**dict(CLIP_L_336, do_center_crop=False, size={'height': 8, 'width': 8}))
    calls = []
    original = CLIPImageProcessor.__call__
    monkeypatch.setattr(CLIPImageProcessor, '__call__',
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    assert process_images([Image.new('RGB', (20, 10))], proc).shape == (1, 3, 8, 8) and calls == [1]
    process_images([Image.new('RGB', (3, 3))], CLIPImageProcessor(**CLIP_L_336))
    assert calls == [1, 1]
    process_images([Image.new('RGB', (30, 20))], CLIPImageProcessor(**CLIP_L_336))
    assert calls == [1, 1]  # the fast path
