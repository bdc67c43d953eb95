"""The MMVM loader on a small directory in the released layout: rows, options, prompt, masks, and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mllm_align.data.mmvm import MMVM_TSV, build_prompt, case_masks, load_mmvm, read_case_masks
from mllm_align.metrics.mmvm import NONE_OPTION

QUESTION = ('Here are two images. In the second image, I have marked several visual objects … Please make a choice '
            'from the following options: \nA. 1\nB. 2\nC. None of the above choices are correct\n')


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': list(rle['size']), 'counts': rle['counts'].decode()}


def _case(root, name, *, cand_masks=2, w=40, h=30):
    case = root / 'match_bench' / name
    case.mkdir(parents=True)
    for f in ('FRAME00.jpg', 'FRAME00_ORI.jpg', 'FRAME01_CAND.jpg', 'FRAME01_ORI.jpg'):
        Image.new('RGB', (w, h), (90, 120, 150)).save(case / f)
    q = np.zeros((h, w), bool)
    q[5:15, 5:20] = True
    (case / 'FRAME00.json').write_text(json.dumps({'width': w, 'height': h, 'objects': [
        {'id': 0, 'segmentation': _rle(q)}]}))
    objs = [{'id': 1, 'segmentation': [[2, 2, 12, 2, 12, 12, 2, 12]]},
            {'id': 2, 'segmentation': _rle(np.pad(np.ones((5, 5), bool), ((20, h - 25), (30, w - 35))))}]
    (case / 'FRAME01_CAND.json').write_text(json.dumps({'objects': objs[:cand_masks]}))
    return case


def _tsv(root, rows):
    """The TSV as the kit writes it (csv quoting keeps the newlines of question and choices)."""
    import csv
    head = ['index', 'question', 'answer', 'match_type', 'image_path', 'choices', 'pure_question']
    with (root / MMVM_TSV).open('w', newline='') as f:
        writer = csv.writer(f, delimiter='\t')
        writer.writerow(head)
        for r in rows:
            writer.writerow([r.get(k, '') for k in head])


def _row(index, case='case_000', answer='B', match_type='[1, 5]'):
    return dict(index=index, question=QUESTION, answer=answer, match_type=match_type,
                image_path=str([f'match_bench/{case}/FRAME00.jpg', f'match_bench/{case}/FRAME01_CAND.jpg']),
                choices=f'A. 1\nB. 2\nC. {NONE_OPTION}', pure_question='Could you tell me …')


@pytest.fixture()
def bench(tmp_path):
    _case(tmp_path, 'case_000')
    _tsv(tmp_path, [_row(0), _row(1, answer='C', match_type='[8]')])
    return tmp_path


def test_rows_options_prompt_and_masks(bench):
    cases = load_mmvm(bench)
    assert [c.index for c in cases] == ['0', '1'] and cases[0].line == 2
    c = cases[0]
    assert c.options == {'A': '1', 'B': '2', 'C': NONE_OPTION} and c.num_candidates == 2 and c.answer == 'B'
    assert c.extra['pure_question'] == 'Could you tell me …' and c.question == QUESTION
    prompt = build_prompt(c)
    assert [m['type'] for m in prompt] == ['image', 'image', 'text'] and prompt[2]['value'] == QUESTION
    assert prompt[0]['value'].endswith('case_000/FRAME00.jpg') and prompt[1]['value'].endswith('FRAME01_CAND.jpg')
    query, cands = case_masks(c)
    assert query.shape == (30, 40) and query.sum() == 150
    assert len(cands) == 2 and cands[1].sum() == 25 and cands[1][20, 30] and not cands[1][19, 30]
    assert cands[0][5, 5] and not cands[0][20, 20]  # the polygon, filled
    assert len(load_mmvm(bench, limit=1)) == 1


def test_bad_input_names_the_line_or_case(tmp_path):
    _case(tmp_path, 'case_000')
    _tsv(tmp_path, [_row(0, answer='D')])
    with pytest.raises(ValueError, match=r'line 2 \(index 0\): answer .D. is not one of the options'):
        load_mmvm(tmp_path)
    _tsv(tmp_path, [_row(0), _row(0)])
    with pytest.raises(ValueError, match='index 0 repeats line 2'):
        load_mmvm(tmp_path)
    _tsv(tmp_path, [_row(0, case='case_404')])
    with pytest.raises(FileNotFoundError, match='line 2 .*case_404/FRAME00.jpg is missing'):
        load_mmvm(tmp_path)
    (tmp_path / 'match_bench' / 'case_000' / 'FRAME01_ORI.jpg').unlink()
    _tsv(tmp_path, [_row(0)])
    with pytest.raises(FileNotFoundError, match='has no FRAME01_ORI.jpg'):
        load_mmvm(tmp_path)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_mmvm(tmp_path / 'nowhere')


def test_bad_masks_are_named(tmp_path):
    case = _case(tmp_path, 'case_000', cand_masks=1)
    _tsv(tmp_path, [_row(0)])
    with pytest.raises(ValueError, match='1 candidates, but question 0 has 2'):
        case_masks(load_mmvm(tmp_path)[0])
    outside = [{'id': 1, 'segmentation': [[0, 0, 99, 0, 99, 9]]}]
    (case / 'FRAME01_CAND.json').write_text(json.dumps({'objects': outside}))
    with pytest.raises(ValueError, match='object 1: a polygon lies outside'):
        read_case_masks(case)
    (case / 'FRAME01_CAND.json').write_text(json.dumps({'objects': [{'id': 3, 'segmentation': _rle(
        np.zeros((30, 40), bool))}]}))
    with pytest.raises(ValueError, match='object 3: the mask is empty'):
        read_case_masks(case)
    (case / 'FRAME01_CAND.json').write_text(json.dumps({'shapes': []}))
    with pytest.raises(ValueError, match='expected \\{"objects"'):
        read_case_masks(case)


def test_an_unreadable_image_is_named_by_its_question(bench):
    from mllm_align.evaluation.mmvm import MMVMEvaluator

    cases = load_mmvm(bench)
    (cases[0].images[1]).write_bytes(b'not a jpeg')
    with pytest.raises(ValueError, match=r'MMVM question 0 \(line 2\): .*FRAME01_CAND.jpg'):
        next(iter(MMVMEvaluator(cases[:1]).batches(model=None)))
