"""The real-photo MMVM mini bench: the released layout, seed determinism, answers right by construction."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from mllm_align.data.mmvm import case_masks, load_mmvm
from mllm_align.metrics.mmvm import NONE_OPTION, parse_match_type

pytestmark = pytest.mark.real_assets


@pytest.fixture(scope='module')
def members():
    from mllm_align.assets.correspondence import read_skimage_members
    from mllm_align.assets.mmvm_mini import SKIMAGE_MEMBERS
    from mllm_align.testing.real_assets import real_wheel
    return read_skimage_members(real_wheel('scikit-image'), SKIMAGE_MEMBERS)


@pytest.fixture(scope='module')
def bench(members, tmp_path_factory):
    from mllm_align.assets.mmvm_mini import build_mmvm_mini
    root = tmp_path_factory.mktemp('mmvm')
    return root, build_mmvm_mini(members, root, num_cases=14, seed=0)


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


def test_layout_loads_and_every_case_is_consistent(bench):
    root, manifest = bench
    cases = load_mmvm(root)  # checks the six files of every case folder
    assert len(cases) == 14 == manifest['cases']
    for c in cases:
        assert list(c.options)[-1] == chr(64 + len(c.options)) and c.options[list(c.options)[-1]] == NONE_OPTION
        assert [c.options[k] for k in list(c.options)[:-1]] == [str(i + 1) for i in range(c.num_candidates)]
        assert set(parse_match_type(c.match_type)) <= {1, 3, 4, 6} and c.question.endswith(
            '\n'.join(f'{k}. {v}' for k, v in c.options.items()) + '\n')
        query, cands = case_masks(c)
        assert len(cands) == c.num_candidates == int(c.extra['num_candidates'])
    assert sorted({c.num_candidates for c in cases}) == [2, 3, 4, 6, 8, 10, 12]


def test_answers_are_right_by_construction(bench):
    """The answer's candidate is the query coin barely changed: same area (×0.95–1.05 in scale) and the same
    pixels' mean; a case without it answers "None of the above"; the query's contour is drawn cyan."""
    root, _ = bench
    for c in load_mmvm(root):
        query, cands = case_masks(c)
        q_img = np.asarray(Image.open(c.case_dir / 'FRAME00_ORI.jpg').convert('RGB')).astype(float)
        c_img = np.asarray(Image.open(c.case_dir / 'FRAME01_ORI.jpg').convert('RGB')).astype(float)
        drawn = np.asarray(Image.open(c.case_dir / 'FRAME00.jpg').convert('RGB')).astype(float)
        from scipy import ndimage as ndi
        ring = ndi.binary_dilation(query, iterations=2) & ~ndi.binary_dilation(query, iterations=1)
        assert np.abs(drawn[ring].mean(0) - [0, 255, 255]).max() < 40  # the middle of the 3-px cyan contour
        if c.extra['query_present'] == '0':
            assert c.answer == list(c.options)[-1]
            continue
        m = cands[int(c.options[c.answer]) - 1]
        assert 0.8 < m.sum() / query.sum() < 1.25
        assert np.abs(c_img[m].mean(0) - q_img[query].mean(0)).max() < 12


def test_same_seed_same_bytes_other_seed_other_bench(members, bench, tmp_path):
    from mllm_align.assets.mmvm_mini import build_mmvm_mini
    root, _ = bench
    build_mmvm_mini(members, tmp_path / 'again', num_cases=14, seed=0)
    assert _digest(tmp_path / 'again') == _digest(root)
    build_mmvm_mini(members, tmp_path / 'other', num_cases=14, seed=1)
    assert _digest(tmp_path / 'other')['mllm_match_eval_full.tsv'] != _digest(root)['mllm_match_eval_full.tsv']
    with pytest.raises(KeyError, match='coins.png'):
        build_mmvm_mini({}, tmp_path / 'x')
