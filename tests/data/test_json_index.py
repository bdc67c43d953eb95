"""The byte-offset index of LLaVA JSON arrays and JSONL files vs ``json.load``."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import mllm_align.data.json_index as json_index
from mllm_align.data import JsonRecords, MalformedRecordError

TRICKY = [
    {'id': 'a{', 'image': 'x.png',
     'conversations': [{'from': 'human', 'value': '<image>\n{"x": [1, {2}]} \\ \\\\ "q" \\"'},
                       {'from': 'gpt', 'value': 'end with backslash \\'}]},
    {'id': 'b]', 'meta': {'image': 'nested.png', 'tags': [[], [{}], '}}}']},
     'conversations': [{'from': 'gpt', 'value': 'naïve 你好 😀 ]]]}}} [[[ {{{ \\\\\\" \u0000 \t'}]},
    {'id': 'c', 'image': ['a.png', 'b.png'], 'conversations': []},
    {'id': 'd', 'text': '"image": "fake", \'image\': 1', 'conversations': [[], {}, [[]]]},
    {'id': 'e', 'image': 'y.png', 'value': None, 'n': [1.5e-3, -2, True, False]},
    {},
]
EXPECTED_IMAGES = [1, 0, 2, 0, 1, 0]

DUMPS = {
    'compact': lambda x: json.dumps(x, separators=(',', ':')),
    'default': json.dumps,
    'indent2': lambda x: json.dumps(x, indent=2),
    'tabs_unicode': lambda x: json.dumps(x, indent='\t', ensure_ascii=False),
    'crlf': lambda x: json.dumps(x, indent=1).replace('\n', '\r\n') + '\r\n\r\n',
    'spaces': lambda x: '  \n ' + json.dumps(x, indent=4, ensure_ascii=False).replace(': ', ' :  ') + '\n\n',
}


@pytest.mark.parametrize('style', sorted(DUMPS))
@pytest.mark.parametrize('chunk', [1 << 22, 5, 2, 1])
def test_json_array_matches_json_load(tmp_path, monkeypatch, style, chunk):
    """Braces, brackets, escaped quotes and backslashes inside strings; chunk boundaries anywhere."""
    monkeypatch.setattr(json_index, '_CHUNK', chunk)
    path = tmp_path / 'data.json'
    path.write_text(DUMPS[style](TRICKY), encoding='utf-8')
    records = JsonRecords(path)
    assert records.format == 'json'
    assert len(records) == len(TRICKY)
    expected = json.loads(path.read_text(encoding='utf-8'))
    assert [records.load(i) for i in range(len(records))] == expected
    assert records.image_counts.tolist() == EXPECTED_IMAGES
    for i in range(len(records)):  # every span is exactly one object
        raw = records.raw(i)
        assert raw.startswith(b'{') and raw.endswith(b'}')


def test_random_records_match_json_load(tmp_path, monkeypatch):
    monkeypatch.setattr(json_index, '_CHUNK', 97)
    rng = np.random.default_rng(0)
    alphabet = list('ab{}[]"\\:, \n\t') + ['é', '😀']
    items = []
    for i in range(300):
        text = ''.join(rng.choice(alphabet, size=int(rng.integers(0, 30))))
        item = {'id': str(i), 'conversations': [{'from': 'human', 'value': text}]}
        if i % 3:
            item['image'] = f'{text}.png'
        items.append(item)
    path = tmp_path / 'random.json'
    path.write_text(json.dumps(items, indent=int(rng.integers(0, 3)) or None), encoding='utf-8')
    records = JsonRecords(path)
    assert [records.load(i) for i in range(len(records))] == items
    assert records.image_counts.tolist() == [int(i % 3 != 0) for i in range(300)]


def test_jsonl(tmp_path):
    lines = [json.dumps(x, ensure_ascii=False) for x in TRICKY]
    text = '\n'.join(lines[:2]) + '\r\n\n   \n' + '\n'.join(lines[2:]) + '\n'
    path = tmp_path / 'data.jsonl'
    path.write_text(text, encoding='utf-8')
    records = JsonRecords(path)
    assert records.format == 'jsonl'
    assert [records.load(i) for i in range(len(records))] == TRICKY
    assert records.line_numbers.tolist() == [1, 2, 5, 6, 7, 8]
    assert records.location(2) == 'line 5'
    # JSONL counts every unescaped "image" key of a line (nested ones too: an estimate only)
    assert records.image_counts.tolist() == [1, 1, 2, 0, 1, 0]


def test_jsonl_named_json_is_detected(tmp_path):
    path = tmp_path / 'data.json'
    path.write_text('{"id": 1}\n{"id": 2}\n')
    records = JsonRecords(path)
    assert records.format == 'jsonl' and len(records) == 2


def test_locations_for_json_array(tmp_path):
    path = tmp_path / 'data.json'
    path.write_text(json.dumps([{'id': i} for i in range(3)], indent=2))
    records = JsonRecords(path)
    assert records.location(0) == 'item 0 (line 2)'
    assert records.location(2) == 'item 2 (line 8)'


@pytest.mark.parametrize('text,message', [
    ('[{"a": 1}, 5]', 'not a sample object'),
    ('[{"a": 1} {"b": 2}]', 'missing comma'),
    ('[{"a": 1},]', 'trailing comma'),
    ('[,{"a": 1}]', 'comma before the first sample'),
    ('[{"a": "1}]', 'never closed'),
    ('[{"a": 1}]]', 'closed before the end'),
    ('[{"a": 1}] x', 'extra data'),
    ('[[1]]', 'nested list'),
    ('[\n{"a": 1},\n{"b": 2}', 'truncated'),
    ('"just a string"', 'starting with "\\["'),
])
def test_broken_json_array_structure(tmp_path, text, message):
    path = tmp_path / 'broken.json'
    path.write_text(text)
    with pytest.raises(MalformedRecordError, match=message) as info:
        JsonRecords(path)
    assert str(path) in str(info.value)
    assert 'line' in str(info.value)


def test_malformed_record_reported_at_load(tmp_path):
    path = tmp_path / 'bad.json'
    path.write_text('[\n  {"id": "ok"},\n  {"id": "bad", "x": [1, 2,]},\n  {"id": "ok2"}\n]\n')
    records = JsonRecords(path)  # structure is fine: the index does not parse records
    assert len(records) == 3
    assert records.load(2) == {'id': 'ok2'}
    with pytest.raises(MalformedRecordError, match=r'bad\.json, item 1 \(line 3\): malformed JSON'):
        records.load(1)

    jsonl = tmp_path / 'bad.jsonl'
    jsonl.write_text('{"id": 1}\n\n{"id": 2,}\n')
    records = JsonRecords(jsonl)
    with pytest.raises(MalformedRecordError, match=r'bad\.jsonl, line 3: malformed JSON'):
        records.load(1)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        JsonRecords(tmp_path / 'nope.json')
    (tmp_path / 'empty.json').write_text('  \n')
    with pytest.raises(MalformedRecordError, match='empty'):
        JsonRecords(tmp_path / 'empty.json')
    (tmp_path / 'list.json').write_text('[ ]')
    assert len(JsonRecords(tmp_path / 'list.json')) == 0


def test_pickle_reopens_the_map(tmp_path):
    path = tmp_path / 'data.json'
    path.write_text(json.dumps(TRICKY))
    records = JsonRecords(path)
    again = pickle.loads(pickle.dumps(records))
    assert [again.load(i) for i in range(len(again))] == TRICKY
    np.testing.assert_array_equal(again.image_counts, records.image_counts)


ID_RECORDS = [
    {'id': 'plain', 'conversations': []},
    {'conversations': [{'id': 'plain'}], 'id': 'q"uote'},  # the record id comes after a nested one
    {'id': 42, 'n': 1},
    {'id': '42'},
    {'id': 'ü' * 40},  # 80 UTF-8 bytes: longer than the vectorised window
    {'id': None},
    {'id': True},
    {'id': {'x': 1}},
    {'meta': {'id': 'plain'}},  # nested only: no record id
    {'id': 'end\\'},
]


@pytest.mark.parametrize('style', ['compact', 'indent2', 'spaces', 'jsonl'])
def test_id_hashes_equal_for_equal_ids(tmp_path, monkeypatch, style):
    monkeypatch.setattr(json_index, '_CHUNK', 16)  # JSON arrays: ids split across chunks
    path = tmp_path / 'd.json'
    if style == 'jsonl':
        path.write_text('\n'.join(json.dumps(r, ensure_ascii=False) for r in ID_RECORDS) + '\n', encoding='utf-8')
    else:
        path.write_text(DUMPS[style](ID_RECORDS), encoding='utf-8')
    records = JsonRecords(path)
    expected_ids = [str(r['id']) if isinstance(r.get('id'), (str, int)) and not isinstance(r.get('id'), bool)
                    else None for r in ID_RECORDS]
    # records 1 and 8 do not start with "id": the first "id" key in their text is a nested one
    assert records.id_exact.tolist() == [k not in (1, 8) for k in range(len(ID_RECORDS))]
    expected_ids[1], expected_ids[8] = 'plain', 'plain'
    assert records.has_id.tolist() == [i is not None for i in expected_ids]
    by_id: dict[str, set[int]] = {}
    for k, i in enumerate(expected_ids):
        if i is not None and k not in (1, 8):
            by_id.setdefault(i, set()).add(int(records.id_hashes[k]))
    assert by_id['42'] == {int(records.id_hashes[2])} == {int(records.id_hashes[3])}  # 42 and "42"
    assert all(len(h) == 1 for h in by_id.values())
    assert len({next(iter(h)) for h in by_id.values()}) == len(by_id)  # different ids, different hashes
    # the same id in a separate file hashes the same
    other = tmp_path / 'o.jsonl'
    other.write_text(json.dumps({'id': 'ü' * 40}, ensure_ascii=False) + '\n' + json.dumps({'id': 'q"uote'}) + '\n',
                     encoding='utf-8')
    o = JsonRecords(other)
    assert o.id_hashes[0] == records.id_hashes[4]
    assert o.id_hashes[1] != records.id_hashes[1]  # o's 'q"uote' vs records' nested 'plain'
    assert records.id_hashes[1] == records.id_hashes[0]  # the nested 'plain' (confirmed by parsing)
