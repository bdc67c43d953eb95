"""Real correspondences in the SPair layout: the .deb reader, the homography / disparity mapping, and the real
graffiti pair (Debian opencv-doc) scored with a simple feature extractor; the motorcycle pair's disparity."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from mllm_align.assets.correspondence import (
    DATA_DIR,
    parse_opencv_matrix,
    read_deb_members,
    write_correspondence_spair,
)
from mllm_align.data.spair import load_spair_pairs

XML = """<?xml version="1.0"?>
<opencv_storage>
<H13 type_id="opencv-matrix">
  <rows>3</rows>
  <cols>3</cols>
  <dt>d</dt>
  <data>
    1.1 0.0 12.0
    0.05 0.9 -4.0
    1e-05 0.0 1.0 </data></H13>
</opencv_storage>
"""


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format='PNG')
    return buf.getvalue()


def _members(rng):
    import cv2
    tex = np.asarray(Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).resize((400, 320),
                                                                                                 Image.BICUBIC))
    H = parse_opencv_matrix(XML, 'H13')
    g3 = cv2.warpPerspective(tex, H, (400, 320))
    left = tex
    disp = np.full((320, 400), 7, dtype=np.uint8)
    disp[:, :20] = 0  # unknown
    right = np.roll(left, -7, axis=1)
    mdisp = np.full((320, 400), 4.5, dtype=np.float32)
    mdisp[:, :30] = np.inf  # unknown
    buf = io.BytesIO()
    np.savez(buf, mdisp)
    return {'graf1.png': _png(tex), 'graf3.png': _png(g3), 'H1to3p.xml': XML.encode(), 'aloeL.jpg': _png(left),
            'aloeR.jpg': _png(right), 'aloeGT.png': _png(disp), 'motorcycle_left.png': _png(left),
            'motorcycle_right.png': _png(np.roll(left, -4, axis=1)), 'motorcycle_disp.npz': buf.getvalue()}, H


def test_opencv_matrix():
    H = parse_opencv_matrix(XML, 'H13')
    np.testing.assert_allclose(H, [[1.1, 0, 12], [0.05, 0.9, -4], [1e-5, 0, 1]])


def test_deb_reader(tmp_path):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode='w:xz') as tar:
        for name, payload in (('graf1.png', b'abc'), ('other.txt', b'x')):
            info = tarfile.TarInfo('./' + DATA_DIR + name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    body = data.getvalue()
    def member(name, payload):  # noqa: E306
        head = f'{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(payload):<10}`\n'.encode()
        return head + payload + (b'\n' if len(payload) % 2 else b'')
    deb = tmp_path / 'x.deb'
    deb.write_bytes(b'!<arch>\n' + member('debian-binary', b'2.0\n') + member('control.tar.xz', b'c') +
                    member('data.tar.xz', body))
    assert read_deb_members(deb, ('graf1.png',)) == {'graf1.png': b'abc'}
    from mllm_align.assets.wheels import AssetError
    with pytest.raises(AssetError, match='lacks'):
        read_deb_members(deb, ('graf3.png',))
    (tmp_path / 'bad.deb').write_bytes(b'PK')
    with pytest.raises(AssetError, match='not a Debian package'):
        read_deb_members(tmp_path / 'bad.deb')


def test_keypoints_follow_the_homography_and_the_disparity(tmp_path):
    members, H = _members(np.random.default_rng(0))
    info = write_correspondence_spair(members, tmp_path)
    assert [p['category'] for p in info['pairs']] == ['graffiti', 'aloe', 'motorcycle']
    pairs = {p.category: p for p in load_spair_pairs(tmp_path)}
    g = pairs['graffiti']
    proj = np.column_stack([g.kps_src, np.ones(len(g.kps_src))]) @ H.T
    np.testing.assert_allclose(g.kps_trg, proj[:, :2] / proj[:, 2:], atol=0.02)  # 2-decimal rounding
    assert 5 <= len(g.kps_src) <= 30
    a = pairs['aloe']
    np.testing.assert_allclose(a.kps_trg, a.kps_src - [7, 0], atol=0.02)
    assert (a.kps_src[:, 0] >= 19.5).all()  # unknown disparity left out
    m = pairs['motorcycle']
    np.testing.assert_allclose(m.kps_trg, m.kps_src - [4.5, 0], atol=0.02)
    assert (m.kps_src[:, 0] >= 29.5).all() and len(m.kps_src) >= 5  # inf disparity left out
    box = json.loads(next((tmp_path / 'PairAnnotation' / 'test').glob('*graffiti*')).read_text())['trg_bndbox']
    assert box == pytest.approx([g.kps_trg[:, 0].min(), g.kps_trg[:, 1].min(), g.kps_trg[:, 0].max(),
                                 g.kps_trg[:, 1].max()], abs=0.02)


class Patches(torch.nn.Module):
    """A fixed simple extractor: normalised 8×8-pixel patches of a 224-px image, randomly projected (seeded)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.randn(3 * 64, 64, generator=torch.Generator().manual_seed(0))

    def forward(self, pixel_values):
        patches = torch.nn.functional.unfold(pixel_values, 8, stride=8).transpose(1, 2)  # (N, 784, 192)
        patches = patches - patches.mean(-1, keepdim=True)
        return torch.nn.functional.normalize(patches, dim=-1) @ self.proj


class Processor:
    image_mean = [0.5, 0.5, 0.5]

    def __call__(self, images, return_tensors='pt'):
        arr = np.stack([np.asarray(im.convert('RGB').resize((224, 224), Image.BICUBIC), np.float32) / 255
                        for im in images])
        return {'pixel_values': torch.from_numpy(arr).permute(0, 3, 1, 2)}


@pytest.mark.real_assets
def test_real_graffiti_pair_is_scored_stably():
    from mllm_align.evaluation.c_score import c_score
    from mllm_align.testing.real_assets import prepared

    try:
        root = prepared('correspondence')
    except RuntimeError as err:
        if 'Could not download' in str(err):
            pytest.skip(f'Debian opencv-doc not reachable: {err}')
        raise
    pairs = load_spair_pairs(root, categories=['graffiti'])
    assert len(pairs) == 1 and len(pairs[0].kps_src) == 30 and pairs[0].size_src == (800, 640)
    first = c_score(Patches(), Processor(), pairs, device='cpu', alpha=0.1)
    again = c_score(Patches(), Processor(), pairs, device='cpu', alpha=0.1)
    assert first.pck == again.pck and first.keypoints == 30
    # features that ignore the image (seeded noise per image) land near chance
    noise = c_score(lambda pv: torch.randn(pv.shape[0], 784, 64, generator=torch.Generator().manual_seed(1)),
                    Processor(), pairs, device='cpu', alpha=0.1)
    assert first.pck > noise.pck


@pytest.mark.real_assets
def test_real_stereo_pairs_follow_their_disparity():
    """Independent check of the written targets: the image patch around each source keypoint matches the target
    image's patch at the written target point (normalised cross-correlation) far better than a shifted one."""
    from mllm_align.testing.real_assets import prepared

    try:
        root = prepared('correspondence')
    except RuntimeError as err:
        if 'Could not download' in str(err):
            pytest.skip(f'Debian opencv-doc not reachable: {err}')
        raise
    for pair in load_spair_pairs(root, categories=['aloe', 'motorcycle']):
        assert len(pair.kps_src) == 30
        src, trg = (np.asarray(Image.open(p).convert('L'), np.float64) for p in (pair.src_image, pair.trg_image))

        def ncc(dx):
            out = []
            for (xs, ys), (xt, yt) in zip(pair.kps_src.round().astype(int), pair.kps_trg.round().astype(int)):
                xt += dx
                a, b = src[ys - 6:ys + 7, xs - 6:xs + 7], trg[yt - 6:yt + 7, xt - 6:xt + 7]
                if a.shape == b.shape == (13, 13):
                    a, b = a - a.mean(), b - b.mean()
                    out.append((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-9))
            return float(np.mean(out))
        assert ncc(0) > 0.5 and ncc(0) > ncc(8) + 0.2, (pair.category, ncc(0), ncc(8))


@pytest.mark.real_assets
def test_random_vit_is_dinov2_small_architecture_with_seeded_weights():
    """data/real/vit_small_random: DINOv2-S's config and processor, weights = a fresh Dinov2Model under seed 0."""
    from transformers import Dinov2Config, Dinov2Model

    from mllm_align.testing.real_assets import prepared

    prepared('dinov2_small')
    root = prepared('vit_small_random')
    ref = Dinov2Config.from_pretrained(str(root.parent / 'dinov2_small'))
    got = Dinov2Model.from_pretrained(str(root))
    assert got.config.hidden_size == ref.hidden_size and got.config.num_hidden_layers == ref.num_hidden_layers
    assert json.loads((root / 'preprocessor_config.json').read_text()) == \
        json.loads((root.parent / 'dinov2_small' / 'preprocessor_config.json').read_text())
    torch.manual_seed(0)
    fresh = Dinov2Model(ref)
    name = 'encoder.layer.0.attention.attention.query.weight'
    torch.testing.assert_close(got.state_dict()[name], fresh.state_dict()[name])
