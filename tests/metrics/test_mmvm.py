"""MMVM answer extraction (both policies) on tricky outputs, the report, the difficulty split, circular evaluation.

Expected letters are worked out by hand from the rules in mllm_align/metrics/mmvm.py's docstring (for
'vlmevalkit': the kit's can_infer_option / can_infer_text, applied step by step).
"""
from __future__ import annotations

import pytest

from mllm_align.metrics.mmvm import (
    MATCH_TYPES,
    NONE_OPTION,
    circular_hits,
    extract_choice,
    mmvm_report,
    parse_choices,
    parse_match_type,
    rotate_options,
)

FOUR = {'A': '1', 'B': '2', 'C': '3', 'D': '4', 'E': NONE_OPTION}
TEN = {**{chr(65 + i): str(i + 1) for i in range(10)}, 'K': NONE_OPTION}

# (prediction, options, strict, vlmevalkit)
CASES = [
    ('(C)', FOUR, 'C', 'C'),
    ('C', FOUR, 'C', 'C'),
    ('The answer is b', FOUR, 'B', None),  # the kit is case-sensitive; "b" is no option text either
    ('The answer is B.', FOUR, 'B', 'B'),
    ('A or B', FOUR, None, None),  # two letters: the kit counts 2 -> text: none
    ('B or A', FOUR, None, None),
    ("Sorry, I can't help with images of people yet.", FOUR, None, None),  # a refusal
    ('Cannot determine the answer from these images.', FOUR, None, None),
    ('3', FOUR, 'C', 'C'),  # the option text alone
    ('object 12', TEN, None, None),  # strict: 12 is no option; kit: "1" and "2" both substrings
    ('object 10', FOUR, None, 'A'),  # the kit: "1" is a substring of "10"
    ('object 10', TEN, 'J', None),  # the kit: "1" and "10" both substrings
    ('I think it is 3', TEN, 'C', 'I'),  # the pronoun I is option I for the kit
    ('I think it is 3', FOUR, 'C', 'C'),
    ('A red circle is the same object.', FOUR, None, 'A'),  # the article A
    ('{"answer": "C"}', FOUR, 'C', None),  # JSON: the kit keeps the quotes around C
    ('```json\n{"answer": 2}\n```', FOUR, 'B', 'B'),
    ('**B**', FOUR, 'B', 'B'),
    ('**Answer:** C', FOUR, 'C', 'C'),
    ('`D`', FOUR, 'D', None),  # a code mark: the kit sees the token `D`
    ('Option A shows a dog, while option B shows the same cat as the first image.', FOUR, None, None),
    ('Looking at A and C: A is darker, C matches in shape, so C is the same.', FOUR, None, None),
    ('None of the above choices are correct.', FOUR, 'E', 'E'),
    ('None of the above. The cyan object does not appear.', TEN, 'K', None),  # the kit: text not whole
    ('E. None of the above choices are correct', TEN, None, 'E'),  # E is "5" here: two choices named
    ('E. None of the above choices are correct', FOUR, 'E', 'E'),
    ('The object is number 4.', FOUR, 'D', 'D'),
    ('The answer is a cat.', FOUR, None, None),  # "a" is an article after the cue
    ('I choose D', TEN, 'D', None),  # the kit counts I and D
    ('A is correct', FOUR, 'A', 'A'),
    ('', FOUR, None, None),
    ('The answers are B and C', TEN, None, None),  # two letters; "answers" is no cue ending in "s"
    ('Selects D', TEN, 'D', 'D'),
    ('options B', TEN, 'B', 'B'),
    ('Failed to obtain answer via API', FOUR, None, None),
]


@pytest.mark.parametrize('prediction,options,strict,kit', CASES)
def test_extraction(prediction, options, strict, kit):
    assert extract_choice(prediction, options) == strict
    assert extract_choice(prediction, options, policy='vlmevalkit') == kit


def test_no_answer_and_bad_arguments():
    assert extract_choice(None, FOUR) is None and extract_choice(float('nan'), FOUR) is None
    with pytest.raises(ValueError, match='policy'):
        extract_choice('A', FOUR, policy='gpt')
    with pytest.raises(ValueError, match='single upper-case letters'):
        extract_choice('A', {'a': '1'})
    with pytest.raises(ValueError, match='judge= is for'):
        extract_choice('A', FOUR, policy='vlmevalkit', judge=lambda a, o: 'A')


def test_judge_is_asked_only_when_the_rules_find_nothing():
    asked = []

    def judge(answer, options):
        asked.append(answer)
        return {'the second one': 'b', 'hmm': 'Q'}.get(answer)

    assert extract_choice('C', FOUR, judge=judge) == 'C' and asked == []
    assert extract_choice('the second one', FOUR, judge=judge) == 'B'  # lower-case verdicts are read
    assert extract_choice('hmm', FOUR, judge=judge) is None  # not an option letter: None, never a guess
    assert asked == ['the second one', 'hmm']


def test_parse_choices():
    assert parse_choices('A. 1\nB. 2\n\nC. None of the above choices are correct\n') == {
        'A': '1', 'B': '2', 'C': NONE_OPTION}
    assert parse_choices('A. 1.5 cm') == {'A': '1.5 cm'}  # split at the first dot only
    with pytest.raises(ValueError, match='line 2'):
        parse_choices('A. 1\nB 2', where='x')
    with pytest.raises(ValueError, match='twice'):
        parse_choices('A. 1\nA. 2')


def test_match_types_both_policies():
    assert parse_match_type('[1, 5, 8]') == [1, 5, 8] and parse_match_type('[3, 3]') == [3]
    assert parse_match_type('[3, 3]', 'vlmevalkit') == [3, 3]
    assert parse_match_type('colour', 'vlmevalkit') == [1, 5] and parse_match_type('[9, 0]', 'vlmevalkit') == [2, 2]
    for bad in ('colour', '[9]', '[]', '[1, "2"]'):
        with pytest.raises(ValueError, match='question 7: match_type'):
            parse_match_type(bad, where='question 7')


def test_report_on_a_hand_made_table():
    types = ['[1]', '[1, 2]', '[2, 8]', '[5]', 'oops', '[9]']
    hits = [1, 0, 1, 1, 0, 1]
    cands = [4, 4, 8, 12, 16, 8]
    r = mmvm_report(types, hits, num_candidates=cands, indices=[10, 11, 12, 13, 14, 15])
    assert r.overall == pytest.approx(4 / 6) and r.count == 6
    assert r.per_type['CL'] == pytest.approx(1 / 2) and r.per_type_count['CL'] == 2
    assert r.per_type['SP'] == pytest.approx(1 / 2) and r.per_type['OM'] == 1.0 and r.per_type['RP'] == 1.0
    assert r.per_type['TM'] is None and r.per_type_count['TM'] == 0
    assert len(r.errors) == 2 and 'question 14' in r.errors[0] and 'question 15' in r.errors[1]
    assert r.by_candidates == pytest.approx({'<=4': 1 / 2, '<=8': 3 / 4, '<=12': 4 / 5, 'all': 4 / 6})
    assert r.by_candidates_count == {'<=4': 2, '<=8': 4, '<=12': 5, 'all': 6}
    kit = mmvm_report(types, hits, policy='vlmevalkit')
    # 'oops' -> [1, 5] (a miss in CL and RP); [9] -> SP (a hit)
    assert kit.per_type['CL'] == pytest.approx(1 / 3) and kit.per_type['RP'] == pytest.approx(1 / 2)
    assert kit.per_type['SP'] == pytest.approx(2 / 3) and kit.errors == []
    assert [name for name, _, _ in r.rows()][:9] == ['Overall', *MATCH_TYPES]
    with pytest.raises(ValueError, match='give one per question'):
        mmvm_report(types, hits[:-1])


def test_rotations_keep_the_none_option_last_and_track_the_answer():
    rotated, answer = rotate_options(FOUR, 'B', 1)
    assert rotated == {'A': '2', 'B': '3', 'C': '4', 'D': '1', 'E': NONE_OPTION} and answer == 'A'
    assert rotated[answer] == FOUR['B']
    for shift in range(4):
        for ans in FOUR:
            opts, new = rotate_options(FOUR, ans, shift)
            assert opts[new] == FOUR[ans] and list(opts) == list(FOUR)
    assert rotate_options(FOUR, 'E', 2)[1] == 'E'


def test_circular_evaluation_of_a_model_that_always_answers_A():
    """Vanilla accuracy of "always A" is the share of answers at A; circular accuracy is 0 (only the none-option
    rows could survive every rotation, and "A" is never the none option)."""
    answers = ['A', 'B', 'A', 'E', 'C']
    vanilla = [extract_choice('A', FOUR) == a for a in answers]
    per_rotation = []
    for a in answers:
        hits = []
        for shift in range(4):
            opts, truth = rotate_options(FOUR, a, shift)
            hits.append(extract_choice('A', opts) == truth)
        per_rotation.append(hits)
    assert sum(vanilla) == 2 and circular_hits(per_rotation) == [0, 0, 0, 0, 0]
    assert circular_hits([[1, 1], [1, 0]]) == [1, 0]
