"""Lazy access to the records of a LLaVA JSON (top-level array) or JSONL file.

Start-up cost matters: LLaVA-1.5's SFT mix has 665k records (~1 GB of JSON) and parsing or
tokenizing all of them before the first step takes minutes. :class:`JsonRecords` instead maps the
file into memory and finds the byte span of every record with vectorised numpy scans, then parses
one record per access:

* JSONL: records are the non-blank lines (newline positions; ``\\n`` never occurs raw inside a
  JSON string).
* JSON array: every ``"``, ``\\``, brace and bracket is located; a quote preceded by an odd run
  of backslashes is escaped; the remaining quotes alternate open/close, so a brace is structural
  iff an even number of unescaped quotes precede it; a running depth over the structural
  characters gives the top-level objects (``{`` entering depth 2, ``}`` returning to depth 1).
  The file is processed in chunks of 4 MiB (state carried across them; the next chunk's bytes
  are scanned on a second thread) so memory stays bounded.

Each record's ``"image"`` key is found without parsing too (JSON arrays: among the opening quotes
of the scan, at record depth; JSONL: a regex over the mapped bytes, skipping escaped quotes, which
also counts nested ``"image"`` keys), giving the image count per record: enough for the dataset
to estimate lengths and modalities for the length-grouped sampler. The record-level ``"id"`` is
taken, vectorised, where it is the first key (as in LLaVA data; elsewhere the first ``"id"`` key
of the record's text, found one record at a time) and hashed without parsing
(:func:`hash_id_values`), so the dataset can report duplicate ids at start-up. On LLaVA-665k-sized data
(0.66 GiB) indexing takes about 2 s on a 2-core CPU (``benchmarks/bench_dataset_startup.py``).
"""
from __future__ import annotations

import json
import mmap
import os
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Literal

import numpy as np

__all__ = ['JsonRecords', 'MalformedRecordError', 'index_json_array', 'index_jsonl',
           'count_image_keys', 'leading_key_values', 'hash_id_values']

# Bytes scanned per step of the JSON-array scan (module-level so tests can force tiny chunks).
_CHUNK = 1 << 22
_QUOTE, _BACKSLASH, _LBRACE, _RBRACE, _LBRACKET, _RBRACKET, _NEWLINE = 34, 92, 123, 125, 91, 93, 10
_WHITESPACE = np.array([32, 9, 10, 13], dtype=np.uint8)
_IMAGE_KEY_RE = re.compile(rb'"image"\s*:\s*')
_ID_KEY_RE = re.compile(rb'"id"\s*:\s*')


class MalformedRecordError(ValueError):
    """A record or the file structure is not valid JSON; the message names file and line."""

    cause = 'malformed_json'


def _line_of(buf: np.ndarray, pos: int) -> int:
    """1-based line number of byte ``pos``."""
    return int(np.count_nonzero(buf[:pos] == _NEWLINE)) + 1


def _first_non_ws(buf: np.ndarray, start: int, stop: int) -> int:
    """Index of the first non-whitespace byte in ``buf[start:stop]`` (or -1)."""
    block = 4096
    for i in range(start, stop, block):
        nz = np.flatnonzero(~np.isin(buf[i:min(i + block, stop)], _WHITESPACE))
        if len(nz):
            return i + int(nz[0])
    return -1


def _candidates(buf: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and bytes of every quote, backslash, brace and bracket in ``buf[lo:hi]``."""
    b = buf[lo:hi]
    y = b & 0xDF  # maps '{'→'[' and '}'→']'
    mask = b == _QUOTE
    mask |= b == _BACKSLASH
    mask |= y == _LBRACKET
    mask |= y == _RBRACKET
    cand = np.flatnonzero(mask)
    return cand + lo, b[cand]  # int64 offsets, uint8 kinds


def _chunks(buf: np.ndarray, lo: int) -> Iterator[tuple[int, int]]:
    n = len(buf)
    while lo < n:
        hi = min(lo + _CHUNK, n)
        while hi < n and buf[hi - 1] == _BACKSLASH:  # never split a backslash run from its target
            hi += 1
        yield lo, hi
        lo = hi


def _prefetched_candidates(buf: np.ndarray, lo: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``_candidates`` of consecutive chunks, the next one computed on a second thread (numpy
    releases the GIL) while the caller processes the current one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque = deque()
        for lo_hi in _chunks(buf, lo):
            pending.append(pool.submit(_candidates, buf, *lo_hi))
            if len(pending) > 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _scan_chunk(pos: np.ndarray, kind: np.ndarray, quotes_before: int, depth_before: int):
    """Structural characters among one chunk's candidates, given the state before the chunk.

    Returns positions, kinds and depth-after of the structural braces/brackets, the new state
    (quote parity, depth), and positions and opening flags of the unescaped quotes.
    """
    is_q = kind == _QUOTE
    is_bs = kind == _BACKSLASH
    escaped = np.zeros(len(pos), dtype=bool)
    if is_bs.any():
        bs_idx = np.flatnonzero(is_bs)
        bs_pos = pos[bs_idx]
        run_start = np.ones(len(bs_pos), dtype=bool)
        run_start[1:] = bs_pos[1:] != bs_pos[:-1] + 1
        k = np.arange(len(bs_pos))
        first = np.maximum.accumulate(np.where(run_start, k, 0))
        odd = np.zeros(len(pos), dtype=bool)
        odd[bs_idx] = (k - first) % 2 == 0  # run length so far is odd
        escaped[1:] = is_q[1:] & odd[:-1] & (pos[:-1] == pos[1:] - 1)
    unescaped = is_q & ~escaped
    # parity of the unescaped quotes up to and including each candidate (uint8 wraps: parity kept)
    quote_count = np.cumsum(unescaped, dtype=np.uint8)
    quote_count += np.uint8(quotes_before & 1)
    structural = ~is_q & ~is_bs & ((quote_count & 1) == 0)
    s_pos = pos[structural]
    s_kind = kind[structural]
    delta = np.where((s_kind == _LBRACE) | (s_kind == _LBRACKET), 1, -1).astype(np.int64)
    depth = np.cumsum(delta) + depth_before
    q_pos = pos[unescaped]
    q_open = (quote_count[unescaped] & 1) == 1
    new_quotes = int(quote_count[-1] & 1) if len(quote_count) else quotes_before
    new_depth = int(depth[-1]) if len(depth) else depth_before
    return s_pos, s_kind, depth, new_quotes, new_depth, q_pos, q_open


def _skip_ws(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Advance each position past whitespace (vectorised; stops at the end of ``buf``)."""
    pos = pos.copy()
    last = len(buf) - 1
    while len(pos):
        pos = np.minimum(pos, last)
        ws = np.isin(buf[pos], _WHITESPACE) & (pos < last)
        if not ws.any():
            break
        pos[ws] += 1
    return pos


def _find_keys(buf: np.ndarray, open_quotes: np.ndarray, key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Among opening-quote positions, those that start the object key ``"key"``; returns
    ``(key positions, value positions)``."""
    n = len(buf)
    cand = open_quotes
    for j, ch in enumerate(key + b'"', start=1):
        if not len(cand):
            break
        cand = cand[buf[np.minimum(cand + j, n - 1)] == ch]
    colon = _skip_ws(buf, cand + len(key) + 2)
    is_key = buf[colon] == ord(':') if len(cand) else np.zeros(0, dtype=bool)
    return cand[is_key], _skip_ws(buf, colon[is_key] + 1)


def index_json_array(buf: np.ndarray, path: str = '<buffer>', key: bytes = b'image'
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte spans of the objects in a top-level JSON array, and where their ``key`` values start.

    Args:
        buf: the file's bytes as ``uint8`` (e.g. a memory map).
        path: named in error messages.
        key: a record-level key to locate (``"image"`` for LLaVA data).

    Returns:
        ``(starts, ends, value_positions)``: int64 arrays; ``buf[starts[i]:ends[i]]`` is record i's
        text; ``value_positions`` are the byte offsets of the values of ``key`` found directly in
        a record (not in nested objects, not inside strings).

    Raises:
        MalformedRecordError: the file is not a JSON array of objects (names the line).
    """
    n = len(buf)
    first = _first_non_ws(buf, 0, n)
    if first < 0 or buf[first] != _LBRACKET:
        raise MalformedRecordError(
            f'{path}: expected a LLaVA JSON file starting with "[" (a list of samples)'
            + ('' if first < 0 else f', found {chr(buf[first])!r} at line {_line_of(buf, first)}')
            + '. For one JSON object per line, use a .jsonl file.')
    starts, ends, events, values = [], [], [], []
    quotes, depth = 0, 0
    for pos, kind in _prefetched_candidates(buf, first):
        depth_in = depth
        s_pos, s_kind, s_depth, quotes, depth, q_pos, q_open = _scan_chunk(pos, kind, quotes, depth)
        opens = (s_kind == _LBRACE) | (s_kind == _LBRACKET)
        starts.append(s_pos[(s_kind == _LBRACE) & (s_depth == 2)])
        ends.append(s_pos[(s_kind == _RBRACE) & (s_depth == 1)] + 1)
        # everything else that touches depth <= 1 is either the array's own brackets or an error
        other = (s_depth < 1) | ((s_depth == 1) & opens) | ((s_depth == 2) & (s_kind == _LBRACKET)) \
            | ((s_depth == 1) & (s_kind == _RBRACKET))
        events.append(np.stack([s_pos[other], s_kind[other].astype(np.int64), s_depth[other]], axis=1))
        key_pos, value_pos = _find_keys(buf, q_pos[q_open], key)
        if len(key_pos):  # keep record-level keys: depth after the last structural char is 2
            si = np.searchsorted(s_pos, key_pos)
            d = np.where(si > 0, s_depth[np.maximum(si - 1, 0)], depth_in) if len(s_pos) \
                else np.full(len(key_pos), depth_in)
            values.append(value_pos[d == 2])
    starts_a = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    ends_a = np.concatenate(ends) if ends else np.zeros(0, np.int64)
    ev = np.concatenate(events) if events else np.zeros((0, 3), np.int64)

    def fail(pos: int, what: str) -> MalformedRecordError:
        item = int(np.searchsorted(starts_a, pos, side='right')) - 1
        near = f' (in or after item {item})' if item >= 0 else ''
        return MalformedRecordError(f'{path}: malformed JSON at line {_line_of(buf, pos)}{near}: {what}. '
                                    'Check the file with `python -m json.tool`.')

    if quotes % 2:
        raise fail(int(n - 1), 'a string is never closed (odd number of unescaped quotes)')
    if depth > 0:
        last = int(starts_a[-1]) if len(starts_a) else first
        raise fail(last, f'the file ends inside the top-level array (depth {depth}); '
                         'it may be truncated')
    # the only structural events at depth <= 1 besides records: the opening '[' and closing ']'
    has_opener = len(ev) > 0 and ev[0, 0] == first
    has_closer = len(ev) >= 2 and ev[-1, 1] == _RBRACKET and ev[-1, 2] == 0
    inner = ev[int(has_opener):len(ev) - int(has_closer)]
    if len(inner) or not has_closer:
        pos, kind, d = inner[0] if len(inner) else (n - 1, _RBRACKET, 1)
        raise fail(int(pos), _describe_event(int(kind), int(d)))
    closer = int(ev[-1, 0])
    tail = _first_non_ws(buf, closer + 1, n)
    if tail >= 0:
        raise fail(tail, 'extra data after the top-level array')
    if len(starts_a) != len(ends_a) or np.any(ends_a <= starts_a) or \
            np.any(starts_a[1:] < ends_a[:-1]):
        raise fail(first, 'sample objects do not nest as expected')
    _check_gaps(buf, first, closer, starts_a, ends_a, fail)
    values_a = np.concatenate(values) if values else np.zeros(0, np.int64)
    return starts_a, ends_a, values_a


def _describe_event(kind: int, depth: int) -> str:
    if kind == _LBRACKET and depth == 2:
        return 'a nested list where a sample object was expected'
    if kind == _RBRACKET and depth == 1:
        return 'the end of a nested list where a sample object was expected'
    if kind == _RBRACKET and depth == 0:
        return 'the top-level array is closed before the end of the file'
    if kind == _LBRACE and depth == 1:
        return 'an object outside the top-level array'
    if depth < 0:
        return f'an unmatched {chr(kind)!r}'
    return f'unbalanced {chr(kind)!r}'


def _check_gaps(buf: np.ndarray, opener: int, closer: int, starts: np.ndarray, ends: np.ndarray,
                fail) -> None:
    """Between records only whitespace and exactly one comma (none before the first/after the last)."""
    gap_lo = np.concatenate([[opener + 1], ends])
    gap_hi = np.concatenate([starts, [closer]])
    lens = gap_hi - gap_lo
    total = int(lens.sum())
    offsets = np.concatenate([[0], np.cumsum(lens)])
    idx = np.repeat(gap_lo - offsets[:-1], lens) + np.arange(total, dtype=np.int64)
    gap_bytes = buf[idx]
    is_comma = gap_bytes == 44
    bad = ~is_comma & ~np.isin(gap_bytes, _WHITESPACE)
    if bad.any():
        raise fail(int(idx[np.flatnonzero(bad)[0]]), 'content between samples that is not a sample object')
    commas = np.concatenate([[0], np.cumsum(is_comma)])
    per_gap = commas[offsets[1:]] - commas[offsets[:-1]]
    expected = np.ones(len(per_gap), dtype=np.int64)
    expected[0] = 0
    expected[-1] = 0
    wrong = np.flatnonzero(per_gap != expected)
    if len(wrong):
        g = int(wrong[0])
        if g == 0:
            what = 'a comma before the first sample'
        elif g == len(per_gap) - 1:
            what = 'a trailing comma after the last sample'
        elif per_gap[g] == 0:
            what = 'a missing comma between two samples'
        else:
            what = f'{int(per_gap[g])} commas between two samples'
        raise fail(int(gap_lo[g]), what)


def index_jsonl(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte spans and 1-based line numbers of the non-blank lines of a JSONL buffer.

    Returns:
        ``(starts, ends, line_numbers)`` int64 arrays; ``ends`` exclude the newline (and a
        trailing ``\\r``).
    """
    n = len(buf)
    nl = [np.flatnonzero(buf[lo:lo + _CHUNK] == _NEWLINE) + lo for lo in range(0, n, _CHUNK)]
    newlines = np.concatenate(nl).astype(np.int64) if nl else np.zeros(0, np.int64)
    line_starts = np.concatenate([[0], newlines + 1])
    line_ends = np.concatenate([newlines, [n]])
    nonempty = line_ends > line_starts
    cr = np.zeros(len(line_ends), dtype=bool)
    cr[nonempty] = buf[line_ends[nonempty] - 1] == 13
    line_ends = line_ends - cr
    keep = line_ends > line_starts
    # lines that start with whitespace may be blank: check those few one by one
    maybe_blank = np.flatnonzero(keep)
    maybe_blank = maybe_blank[np.isin(buf[line_starts[maybe_blank]], _WHITESPACE)]
    for i in maybe_blank:
        if not bytes(buf[line_starts[i]:line_ends[i]]).strip():
            keep[i] = False
    line_numbers = np.flatnonzero(keep).astype(np.int64) + 1
    return line_starts[keep].astype(np.int64), line_ends[keep].astype(np.int64), line_numbers


def count_image_keys(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                     value_pos: np.ndarray) -> np.ndarray:
    """Images per record from the positions of its ``"image"`` values (1, or a list's length)."""
    counts = np.zeros(len(starts), dtype=np.int64)
    if len(value_pos) == 0 or len(starts) == 0:
        return counts
    item = np.searchsorted(starts, value_pos, side='right') - 1
    inside = (item >= 0) & (value_pos < ends[np.maximum(item, 0)])
    counts += np.bincount(item[inside], minlength=len(starts))
    decoder = json.JSONDecoder()
    for k in np.flatnonzero(inside & (buf[value_pos] == _LBRACKET)):  # lists: count entries (rare)
        i = int(item[k])
        text = bytes(buf[int(value_pos[k]):int(ends[i])]).decode('utf-8', errors='replace')
        try:
            value, _ = decoder.raw_decode(text)
        except ValueError:
            continue
        counts[i] += len(value) - 1
    return counts


def leading_key_values(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, key: bytes) -> np.ndarray:
    """Where each record's ``key`` value starts when ``key`` is the record's first key, else -1.

    LLaVA data writes ``{"id": …, "image": …, "conversations": …}``, so for ``"id"`` this is
    exact and vectorised (whitespace anywhere JSON allows it).
    """
    n = len(buf)
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    pos = _skip_ws(buf, starts + 1)
    ok = np.ones(len(starts), dtype=bool)
    for j, ch in enumerate(b'"' + key + b'"'):
        ok &= buf[np.minimum(pos + j, n - 1)] == ch
    colon = _skip_ws(buf, np.minimum(pos + len(key) + 2, n - 1))
    ok &= buf[colon] == ord(':')
    value = _skip_ws(buf, np.minimum(colon + 1, n - 1))
    ok &= value < ends
    return np.where(ok, value, -1).astype(np.int64)


def _search_key(mm: Any, buf: np.ndarray, start: int, end: int) -> int:
    """Value position of the first unescaped ``"id"`` key in ``buf[start:end]`` (may be a nested
    one: the caller confirms by parsing), or -1."""
    pos = start
    while True:
        m = _ID_KEY_RE.search(mm, pos, end)
        if m is None:
            return -1
        if buf[m.start() - 1] != _BACKSLASH:
            return m.end()
        pos = m.end()


_HASH_OFFSET, _HASH_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
_ID_WINDOWS = (24, 64, 256)  # bytes compared vectorised (then wider); longer or escaped ids: one by one
_NUMBER_END = np.array([44, 125, 93, 32, 9, 10, 13], dtype=np.uint8)  # , } ] and whitespace
_NUMBER_CHARS = np.frombuffer(b'-+.0123456789eE', dtype=np.uint8)


def _hash_rows(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """64-bit hash of each row's first ``lengths[i]`` bytes (the rest of the row must be 0).

    FNV-1a over 8-byte words instead of bytes (rows are ``[n, W]`` uint8, W a multiple of 8),
    then the length mixed in; vectorised over rows.
    """
    words = np.ascontiguousarray(rows).view(np.uint64)  # (n, W / 8)
    h = np.full(len(rows), _HASH_OFFSET, dtype=np.uint64)
    with np.errstate(over='ignore'):
        for k in range(words.shape[1]):
            live = lengths > 8 * k
            if not live.any():
                break
            h = np.where(live, (h ^ words[:, k]) * _HASH_PRIME, h)
        h ^= h >> np.uint64(31)
        h = (h ^ lengths.astype(np.uint64)) * _HASH_PRIME
    return h


def _hash_bytes(raw: bytes) -> np.uint64:
    """:func:`_hash_rows` of one byte string."""
    width = max(8, -(-len(raw) // 8) * 8)
    row = np.zeros((1, width), dtype=np.uint8)
    row[0, :len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return _hash_rows(row, np.array([len(raw)]))[0]


def _hash_windows(buf: np.ndarray, start: np.ndarray, is_str: np.ndarray, width: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Hash ids that end within ``width`` bytes of ``start`` and have no escapes.

    Returns ``(hashes, ok)``; rows not ``ok`` need a wider window or decoding.
    """
    size = len(buf)
    cols = np.arange(width)
    near_end = np.flatnonzero(start + width > size)
    if size >= width:  # (n, width) copy through a strided view: no index matrix
        win = np.lib.stride_tricks.sliding_window_view(buf, width)[np.minimum(start, size - width)]
    else:
        win = np.zeros((len(start), width), dtype=np.uint8)
    if len(near_end):  # the last record(s): only the bytes that exist, then "end of file"
        idx = start[near_end, None] + cols
        win[near_end] = np.where(idx < size, buf[np.minimum(idx, size - 1)], 0)
    term = win == _QUOTE
    num = np.flatnonzero(~is_str)
    if len(num):  # numbers end at a delimiter (rare: LLaVA ids are strings)
        term[num] = np.isin(win[num], _NUMBER_END)
    if len(near_end):
        term[near_end] |= start[near_end, None] + cols >= size
    length = np.argmax(term, axis=1)
    inside = cols < length[:, None]
    ok = term.any(axis=1)
    backslash = np.flatnonzero((win == _BACKSLASH).any(axis=1))  # escapes inside: decode instead
    ok[backslash] &= ~((win[backslash] == _BACKSLASH) & inside[backslash]).any(axis=1)
    if len(num):
        ok[num] &= (length[num] > 0) & (np.isin(win[num], _NUMBER_CHARS) | ~inside[num]).all(axis=1)
    win *= inside  # zero the bytes after the id
    hashes = np.zeros(len(start), dtype=np.uint64)
    if ok.any():
        hashes[ok] = _hash_rows(win[ok], length[ok])
    return hashes, ok


def hash_id_values(buf: np.ndarray, value_pos: np.ndarray, ends: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Hash each record's id value (a JSON string or number) without parsing the record.

    The hash covers the id's text (a string's UTF-8 bytes, a number's digits as written), so
    ``"7"`` and ``7`` hash alike, as ``str(record['id'])`` does. Ids of up to 255 bytes without
    escapes are hashed vectorised; the rest are decoded with ``json`` one by one.

    Args:
        buf: the file's bytes.
        value_pos: ``[N]`` byte offset of each record's id value, -1 where it has none.
        ends: ``[N]`` end of each record's span (bounds the one-by-one decoding).

    Returns:
        ``(hashes, has_id)``: uint64 ``[N]`` and bool ``[N]`` (False: no id, or an id that is not
        a string or number, e.g. ``null``). Different ids collide with probability ≈ 2⁻⁶⁴.
    """
    hashes = np.zeros(len(value_pos), dtype=np.uint64)
    has_id = value_pos >= 0
    todo = np.flatnonzero(has_id)
    for width in _ID_WINDOWS:
        if not len(todo):
            break
        pos = value_pos[todo]
        is_str = buf[pos] == _QUOTE
        h, ok = _hash_windows(buf, pos + is_str, is_str, width)
        hashes[todo[ok]] = h[ok]
        todo = todo[~ok]
    decoder = json.JSONDecoder()
    for i in todo:  # long or escaped ids, and values that are not ids at all
        text = bytes(buf[int(value_pos[i]):int(ends[i])]).decode('utf-8', errors='replace')
        try:
            value, _ = decoder.raw_decode(text)
        except ValueError:
            value = None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            has_id[i] = False
            continue
        hashes[i] = _hash_bytes(str(value).encode('utf-8'))
    return hashes, has_id


class JsonRecords:
    """Records of one LLaVA JSON array or JSONL file, indexed by byte offsets and parsed on access.

    The format is detected from the first non-whitespace byte (``[`` → JSON array, ``{`` → JSONL),
    so a JSONL file named ``.json`` works too.

    Args:
        path: the data file.

    Attributes:
        path: the file path (str).
        format: ``'json'`` or ``'jsonl'``.
        starts, ends: int64 byte spans of the records.
        image_counts: int64 number of images per record (from the ``"image"`` key; estimated, not
            validated: the dataset checks each record when it loads it).
        id_hashes, has_id: uint64 hash of each record's ``"id"`` (see :func:`hash_id_values`) and
            whether it has a string or number id; equal ids have equal hashes, in any file.
        id_exact: True where the id was found as the record's first key (exact); elsewhere it is
            the first ``"id"`` key in the record's text, possibly a nested one.

    Raises:
        FileNotFoundError: missing file.
        MalformedRecordError: empty file or a JSON array whose structure is broken.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f'Data file {self.path!r} does not exist; check `data_path`.')
        buf = self._buffer()
        first = _first_non_ws(buf, 0, len(buf)) if len(buf) else -1
        if first < 0:
            raise MalformedRecordError(f'{self.path}: the data file is empty; expected a LLaVA JSON '
                                       'list of samples or JSONL.')
        if buf[first] not in (_LBRACKET, _LBRACE):
            raise MalformedRecordError(
                f'{self.path}: expected a LLaVA JSON file starting with "[" (a list of samples) or '
                f'JSONL starting with "{{", found {chr(buf[first])!r} at line {_line_of(buf, first)}.')
        self.format: Literal['json', 'jsonl'] = 'json' if buf[first] == _LBRACKET else 'jsonl'
        if self.format == 'json':
            self.starts, self.ends, image_pos = index_json_array(buf, self.path)
            self.line_numbers: np.ndarray | None = None
        else:
            self.starts, self.ends, self.line_numbers = index_jsonl(buf)
            spans = np.fromiter((m.span() for m in _IMAGE_KEY_RE.finditer(self._mm)),
                                dtype=np.dtype((np.int64, 2))).reshape(-1, 2)
            # a key quote preceded by a backslash is text inside a string
            keep = (spans[:, 0] == 0) | (buf[np.maximum(spans[:, 0] - 1, 0)] != _BACKSLASH)
            image_pos = spans[keep, 1]
        self.image_counts = count_image_keys(buf, self.starts, self.ends, image_pos)
        id_pos = leading_key_values(buf, self.starts, self.ends, b'id')
        self.id_exact = id_pos >= 0  # False: found by the fallback search below, or no id
        for i in np.flatnonzero(~self.id_exact):  # records whose first key is not "id" (rare)
            id_pos[i] = _search_key(self._mm, buf, int(self.starts[i]) + 1, int(self.ends[i]))
        self.id_hashes, self.has_id = hash_id_values(buf, id_pos, self.ends)

    # -------------------------------------------------------------- memory map (fork/pickle safe)
    def _buffer(self) -> np.ndarray:
        if getattr(self, '_buf', None) is None:
            with open(self.path, 'rb') as f:
                size = os.fstat(f.fileno()).st_size
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b''
            self._buf = np.frombuffer(self._mm, dtype=np.uint8)
        return self._buf

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop('_mm', None)
        state.pop('_buf', None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # -------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.starts)

    @property
    def byte_lengths(self) -> np.ndarray:
        """Bytes of each record's JSON text."""
        return self.ends - self.starts

    def raw(self, index: int) -> bytes:
        """The JSON text of record ``index``."""
        buf = self._buffer()
        return bytes(buf[int(self.starts[index]):int(self.ends[index])])

    def line_number(self, index: int) -> int:
        """1-based line where record ``index`` starts."""
        if self.line_numbers is not None:
            return int(self.line_numbers[index])
        return _line_of(self._buffer(), int(self.starts[index]))

    def location(self, index: int) -> str:
        """Human-readable position: ``'line 12'`` (JSONL) or ``'item 3 (line 45)'`` (JSON)."""
        if self.format == 'jsonl':
            return f'line {self.line_number(index)}'
        return f'item {index} (line {self.line_number(index)})'

    def load(self, index: int) -> Any:
        """Parse record ``index``.

        Raises:
            MalformedRecordError: invalid JSON, naming the file and the line.
        """
        try:
            return json.loads(self.raw(index))
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
            raise MalformedRecordError(
                f'{self.path}, {self.location(index)}: malformed JSON ({err}). '
                'Fix or remove this record.') from None
