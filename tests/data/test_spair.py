"""The SPair-71k loader on a generated directory in the real layout, and its bad-input errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mllm_align.data.spair import load_spair_pairs
from mllm_align.testing.spair import write_synthetic_spair


@pytest.fixture()
def spair(tmp_path):
    return write_synthetic_spair(tmp_path / 'spair', categories=('cat', 'dog'), pairs_per_category=2, seed=1)


def test_loads_pairs_in_file_order(spair):
    pairs = load_spair_pairs(spair, 'test')
    assert [p.category for p in pairs] == ['cat', 'dog', 'cat', 'dog']  # sorted file names
    ann = json.loads(next((spair / 'PairAnnotation' / 'test').glob('000000-cat*')).read_text())
    p = pairs[0]
    np.testing.assert_allclose(p.kps_src, ann['src_kps'])
    np.testing.assert_allclose(p.kps_trg, ann['trg_kps'])
    assert p.size_src == tuple(ann['src_imsize'][:2]) and p.bbox_trg == tuple(ann['trg_bndbox'])
    assert p.src_image.is_file() and p.visible.all()
    assert [q.category for q in load_spair_pairs(spair, 'test', categories=['dog'])] == ['dog', 'dog']
    assert len(load_spair_pairs(spair, 'test', limit=3)) == 3


def test_keypoints_from_image_annotations_when_the_pair_has_none(spair):
    path = next((spair / 'PairAnnotation' / 'test').glob('000000-cat*'))
    ann = json.loads(path.read_text())
    want_src, want_trg = np.array(ann.pop('src_kps')), np.array(ann.pop('trg_kps'))
    path.write_text(json.dumps(ann))
    img = spair / 'ImageAnnotation' / 'cat' / 'cat_000_trg.json'
    image_ann = json.loads(img.read_text())
    image_ann['kps']['2'] = None  # keypoint 2 not visible in the target
    img.write_text(json.dumps(image_ann))
    p = load_spair_pairs(spair, 'test')[0]
    keep = [k for k in range(len(want_src)) if k != 2]
    np.testing.assert_allclose(p.kps_src, want_src[keep])
    np.testing.assert_allclose(p.kps_trg, want_trg[keep])


def test_bad_directories(spair, tmp_path):
    with pytest.raises(ValueError, match='splits are'):
        load_spair_pairs(spair, 'train')
    with pytest.raises(FileNotFoundError, match='not an SPair-71k directory'):
        load_spair_pairs(tmp_path / 'nowhere')
    with pytest.raises(ValueError, match=r"categories \['horse'\]"):
        load_spair_pairs(spair, categories=['horse'])
    (spair / 'JPEGImages' / 'dog' / 'dog_001_trg.jpg').unlink()
    with pytest.raises(FileNotFoundError, match='dog_001_trg.jpg'):
        load_spair_pairs(spair)
    (spair / 'ImageAnnotation' / 'cat' / 'cat_000_src.json').unlink()
    with pytest.raises(FileNotFoundError, match='image annotation .*cat_000_src.json'):
        load_spair_pairs(spair, categories=['cat'])
