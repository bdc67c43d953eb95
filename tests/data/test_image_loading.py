"""load_image / to_rgb: size guard from the header, high bit depths, alpha, modes, EXIF."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mllm_align.data.image_loading import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageTooLargeError,
    UnreadableImageError,
    load_image,
    read_image_size,
    to_rgb,
)


def write_bomb_png(path, side: int = 20000) -> None:
    """A valid 1-bit greyscale PNG of ``side``×``side`` black pixels: a few KB on disk."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data))
    row = b'\0' * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b''.join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack('>IIBBBBB', side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', idat) + chunk(b'IEND', b''))


def test_decompression_bomb_is_refused_from_the_header(tmp_path, monkeypatch):
    bomb = tmp_path / 'bomb.png'
    write_bomb_png(bomb)
    assert bomb.stat().st_size < 100_000
    assert read_image_size(bomb) == (20000, 20000)
    decoded = []
    monkeypatch.setattr(Image.Image, 'load', lambda self: decoded.append(1))
    with pytest.raises(ImageTooLargeError) as info:
        load_image(bomb)
    message = str(info.value)
    assert str(bomb) in message and '20000×20000' in message and f'{DEFAULT_MAX_IMAGE_PIXELS:,}' in message
    assert 'max_image_pixels' in message
    assert info.value.size == (20000, 20000) and decoded == []  # nothing decoded
    with pytest.raises(ImageTooLargeError, match='limit of 100'):
        load_image(bomb, max_pixels=100)


def test_limit_above_pillows_guard_is_honoured_and_pillow_is_restored(tmp_path, monkeypatch):
    path = tmp_path / 'wide.png'
    Image.new('L', (300, 200), 7).save(path)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # Pillow alone would refuse (> 2 × 1000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    out = load_image(path, max_pixels=None)
    assert out.mode == 'RGB' and out.size == (300, 200) and out.getpixel((0, 0)) == (7, 7, 7)
    assert load_image(path, max_pixels=60_000).size == (300, 200)
    assert Image.MAX_IMAGE_PIXELS == 1000  # lifted only while loading
    with pytest.raises(ImageTooLargeError):
        load_image(path, max_pixels=59_999)
    with pytest.raises(ValueError, match='positive or None'):
        load_image(path, max_pixels=0)


def _ref16(v: np.ndarray) -> np.ndarray:
    """Hand reference: round(v / 257) with halves up, in float64."""
    return np.floor(v.astype(np.float64) / 257 + 0.5).astype(np.uint8)


def test_16_bit_png_and_tiff_scale_to_8_bit(tmp_path):
    values = np.array([[0, 128, 129, 256, 257, 385, 386, 32768, 65278, 65535]], dtype=np.uint16)
    # hand-computed: 128/257 = 0.498 → 0; 129/257 = 0.502 → 1; 385/257 = 1.498 → 1; 386 → 2; 65278/257 = 254
    expected = np.array([[0, 0, 1, 1, 1, 1, 2, 128, 254, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(_ref16(values), expected)
    png = tmp_path / 'deep.png'
    Image.fromarray(values).save(png)
    tiff_be = tmp_path / 'deep_be.tiff'
    Image.frombytes('I;16B', (10, 1), values.astype('>u2').tobytes()).save(tiff_be)
    for path in (png, tiff_be):
        with Image.open(path) as raw:
            assert raw.mode.startswith('I')  # a 16-bit mode, not 8-bit
        out = np.asarray(load_image(path))
        assert out.dtype == np.uint8 and out.shape == (1, 10, 3)
        np.testing.assert_array_equal(out[..., 0], expected, err_msg=str(path))
        assert (out[..., 0] == out[..., 2]).all()
    # a mid-grey 16-bit image is mid-grey, not white (the bug this guards against)
    mid = tmp_path / 'mid.png'
    Image.fromarray(np.full((4, 4), 30000, dtype=np.uint16)).save(mid)
    assert load_image(mid).getpixel((0, 0)) == (117, 117, 117)  # 30000 / 257 = 116.7


def test_32_bit_int_and_float_modes():
    i16_range = Image.fromarray(np.array([[0, 65535, 514]], dtype=np.int32), mode='I')
    np.testing.assert_array_equal(np.asarray(to_rgb(i16_range))[0, :, 0], [0, 255, 2])
    wide = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32), mode='I')
    np.testing.assert_array_equal(np.asarray(to_rgb(wide))[0, :, 0], [0, 128, 255])  # min..max
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32), mode='F')
    np.testing.assert_array_equal(np.asarray(to_rgb(unit))[0, :, 0], [0, 128, 255, 0])
    big = Image.fromarray(np.array([[10.0, 20.0, 30.0]], dtype=np.float32), mode='F')
    np.testing.assert_array_equal(np.asarray(to_rgb(big))[0, :, 0], [0, 128, 255])


def _composite(rgb, alpha, bg) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return rgb.astype(np.float64) * a + np.asarray(bg, np.float64) * (1 - a)


@pytest.mark.parametrize('bg', [(255, 255, 255), (122, 116, 104)])
def test_alpha_is_composited_on_the_background(bg):
    rgb = np.array([[[255, 0, 0], [0, 0, 255], [10, 200, 30]]], dtype=np.uint8)
    alpha = np.array([[255, 0, 128]], dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, alpha]), mode='RGBA')
    out = np.asarray(to_rgb(rgba, bg)).astype(np.float64)
    assert np.abs(out - _composite(rgb, alpha, bg)).max() <= 1
    assert tuple(out[0, 1]) == bg  # fully transparent: the background, not the hidden blue
    la = Image.fromarray(np.dstack([np.array([[200, 0, 90]], np.uint8), alpha]), mode='LA')
    ref = _composite(np.repeat(np.array([[200, 0, 90]], np.uint8)[..., None], 3, -1), alpha, bg)
    assert np.abs(np.asarray(to_rgb(la, bg)) - ref).max() <= 1


def test_transparency_entries_of_p_l_rgb_are_honoured(tmp_path):
    p = Image.new('P', (2, 1))
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.info['transparency'] = 0  # palette index 0 transparent
    assert np.asarray(to_rgb(p, (1, 2, 3))).tolist() == [[[1, 2, 3], [255, 0, 0]]]
    path = tmp_path / 'p.png'
    p.save(path, transparency=0)
    assert np.asarray(load_image(path, background=(9, 9, 9))).tolist() == [[[9, 9, 9], [255, 0, 0]]]
    grey = Image.fromarray(np.array([[0, 77]], np.uint8), mode='L')
    grey.info['transparency'] = 0
    assert np.asarray(to_rgb(grey, (5, 6, 7))).tolist() == [[[5, 6, 7], [77, 77, 77]]]


def test_other_modes_convert_correctly():
    assert to_rgb(Image.new('CMYK', (1, 1), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    ycc = Image.new('RGB', (1, 1), (10, 200, 30)).convert('YCbCr')
    assert np.abs(np.subtract(to_rgb(ycc).getpixel((0, 0)), (10, 200, 30))).max() <= 2
    one_bit = Image.new('1', (2, 1))
    one_bit.putpixel((1, 0), 1)
    assert np.asarray(to_rgb(one_bit)).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    rgb = Image.new('RGB', (2, 2))
    assert to_rgb(rgb) is rgb
    with pytest.raises(ValueError, match='RGB triple'):
        to_rgb(rgb, (1, 2))


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((2, 4, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)  # red top-left of a 4×2 image
    image = Image.fromarray(arr)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    path = tmp_path / 'rot.png'
    image.save(path, exif=exif)
    shown = load_image(path)
    assert shown.size == (2, 4)
    assert shown.getpixel((1, 0)) == (255, 0, 0)  # red is now top-right
    assert load_image(path, exif_transpose=False).size == (4, 2)


def test_unreadable_and_truncated_files_name_the_file(tmp_path):
    junk = tmp_path / 'junk.png'
    junk.write_bytes(b'not an image')
    with pytest.raises(UnreadableImageError, match='junk.png.*cannot be read'):
        load_image(junk)
    good = tmp_path / 'cut.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:400])
    with pytest.raises(UnreadableImageError, match='cut.png'):
        load_image(good)
