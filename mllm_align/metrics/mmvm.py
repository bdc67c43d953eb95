"""MMVM scoring: which option a model's free-text answer chose, and the per-category report.

MMVM (the CoLVA paper's multimodal visual-matching benchmark) asks, for two images, which of the marked objects
in the second image is the object marked in the first; the options are the candidates' numeric tags
("A. 1", "B. 2", …) and, always last, "None of the above choices are correct". The model answers in free text,
so the score depends on how a letter is read out of it. Two policies:

``'vlmevalkit'`` — the rule-based path of the benchmark's evaluation kit (a VLMEvalKit fork), exactly, so that
published numbers can be matched. With ``answer`` the model's text and ``options`` letter → text:

1. ``'Failed to obtain answer via API'`` in the answer → nothing; one of the kit's four refusal strings →
   the refusal 'Z' (never right; returned here as None);
2. each of ``.()[],:;!*#{}`` replaced by a space, then split on whitespace; if exactly one distinct option
   letter is a whole token (case-sensitive), that letter; if none is and 'Z' is a token, the refusal 'Z';
3. else, if exactly one option text (lower-cased) is a substring of the lower-cased answer, its letter;
4. else nothing (the kit then counts the question wrong; with an LLM judge it asks it three times and then
   picks a *random* option, which this toolkit never does).

Its blind spots: with nine or more options the pronoun "I" is option I ("I think it is 3" → I); option texts
are numbers, so "object 10" contains "1" (→ the option "1" when there is no option "10"); ``{"answer": "C"}``
reads as C only by luck of the punctuation list; "A or B" reads as nothing, "a red one" as nothing.

``'strict'`` (the default) keeps the kit's clear successes and fixes its clear mistakes:

- refusals and empty answers → None; a JSON object (or a fenced JSON block) with an ``answer`` / ``choice`` /
  ``option`` key is read by its value; markdown emphasis, code marks and quotes are removed first;
- an answer that starts with "None of the above" is the last option (the none option);
- "C. text" whose text is another option's text (the model mixed two option lists) is None;
- a letter counts when it is an option letter standing for a choice: the whole answer (``C``, ``(C)``,
  ``C.``), bracketed (``(C)``, ``[C]``), at the start of a line with ``.`` / ``)`` / ``:`` (``C. 3``), or
  after an answer cue (``answer is b``, ``Answer: C``, ``option C``, ``choice C``; the letter in any case
  there); a bare upper-case letter in running text also counts, except ``A`` and ``I``, which are English
  words there. Letters after an answer cue decide first: exactly one distinct one is the choice, two are
  None. Without a cue, exactly one distinct letter named anywhere is the choice; two or more are None;
- no letter: the option texts are matched — numeric texts as whole numbers only ("10" is not "1", "12" is
  not "1" or "2"), other texts case-insensitively on word boundaries; exactly one matching option is the
  choice, otherwise None;
- never a guess. An optional ``judge(answer, options) -> letter | None`` is asked only when the rules find
  nothing; what it returns must be an option letter (anything else is None). It must be deterministic
  (e.g. a local model with greedy decoding); there is no random fallback.

The report (:func:`mmvm_report`): overall accuracy and the accuracy of each of the eight match types —
CL (colour), SP (shape/posture), TM (textures/materials), SZ (size), RP (relative position), OO (object
orientation), BR (binding relationship), OM (object markers) — ``match_type`` being a list literal such
as ``"[1, 5, 8]"`` (1-based into that order) and a question counting once in each type it lists; accuracy
by the number of candidates (≤ 4, ≤ 8, ≤ 12, all); and the circular evaluation helpers
(:func:`rotate_options`, :func:`circular_hits`): each case asked once per rotation of its candidate options,
right only when right every time, which removes the position bias of a model that favours a letter.
"""
from __future__ import annotations

import ast
import json
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

__all__ = ['KIT_REFUSALS', 'MATCH_TYPES', 'MMVMReport', 'NONE_OPTION', 'Policy', 'circular_hits', 'extract_choice',
           'mmvm_report', 'none_letter', 'parse_choices', 'parse_match_type', 'rotate_options']

Policy = Literal['strict', 'vlmevalkit']
#: The match types in the benchmark's order (``match_type`` ids 1–8).
MATCH_TYPES = ('CL', 'SP', 'TM', 'SZ', 'RP', 'OO', 'BR', 'OM')
#: The text of the last option of every MMVM question.
NONE_OPTION = 'None of the above choices are correct'
#: The evaluation kit's refusal strings (case-sensitive substrings); the kit maps them to the refusal 'Z'.
KIT_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                "I'm sorry, but without the image provided", 'Cannot determine the answer')
KIT_API_FAILURE = 'Failed to obtain answer via API'
_KIT_PUNCTUATION = '.()[],:;!*#{}'
_JSON_KEYS = ('answer', 'choice', 'option', 'final_answer', 'final answer')
# "the answer is C", "Answer: (b)", "I choose C", "final answer C": a letter stated as the answer
_STRONG_CUE = re.compile(r'(?:\b(?:final\s+)?answer\b\s*(?:is\b|:|would be|should be|=)?|\b(?:I\s+)?(?:choose|chose|'
                         r'select(?:ed)?|pick(?:ed)?)\b|\bcorrect\s+(?:option|choice)\b\s*(?:is\b|:)?)'
                         r'\s*[:\-]?\s*(?:option\s+|choice\s+)?[(\[]?\s*([A-Za-z])(?![A-Za-z0-9\'’])', re.IGNORECASE)
_WEAK_CUE = re.compile(r'\b(?:option|choice)\b\s*[(\[]?\s*([A-Za-z])(?![A-Za-z0-9\'’])', re.IGNORECASE)
_IS_CORRECT = re.compile(r'(?<![A-Za-z0-9\'’-])([A-Z])\s+(?:is|seems|would be)\s+(?:the\s+)?(?:correct|right|answer|'
                         r'best|same|match)')


# ------------------------------------------------------------------------------------------------ options
def parse_choices(text: str, where: str = 'choices') -> dict[str, str]:
    """The ``choices`` cell of the MMVM TSV (``"A. 1\\nB. 2\\n…"``) → ``{'A': '1', 'B': '2', …}``.

    Each non-empty line is ``LETTER. TEXT``, split at the first ``.`` (the kit's parse). Raises ValueError naming
    ``where`` for a line without a ``.``, a key that is not one upper-case letter, a repeated letter, no line.
    """
    out: dict[str, str] = {}
    for n, line in enumerate((ln.strip() for ln in str(text).split('\n')), 1):
        if not line:
            continue
        key, dot, value = line.partition('.')
        key = key.strip()
        if not dot or len(key) != 1 or key not in string.ascii_uppercase:
            raise ValueError(f'{where}: line {n} {line!r} is not "LETTER. option text".')
        if key in out:
            raise ValueError(f'{where}: option {key} appears twice.')
        out[key] = value.strip()
    if not out:
        raise ValueError(f'{where}: no options.')
    return out


def none_letter(options: Mapping[str, str]) -> str | None:
    """The letter of the "None of the above…" option (the last one in MMVM), or None if there is none."""
    for letter, text in options.items():
        if str(text).strip().lower().startswith('none of the above'):
            return letter
    return None


# ------------------------------------------------------------------------------------------------ extraction
def _kit_option(answer: str, options: Mapping[str, str]) -> str | None | Literal[False]:
    """The kit's ``can_infer_option``: a letter, None for its refusal 'Z', False for "nothing found"."""
    if KIT_API_FAILURE in answer:
        return False
    if any(r in answer for r in KIT_REFUSALS):
        return None
    mod = answer
    for ch in _KIT_PUNCTUATION:
        mod = mod.replace(ch, ' ')
    tokens = mod.split()
    hits = [letter for letter in options if letter in tokens]
    if len(hits) == 1:
        return hits[0]
    if not hits and 'Z' in tokens:
        return None
    return False


def _kit_text(answer: str, options: Mapping[str, str]) -> str | None:
    low = answer.lower()
    hits = [letter for letter, text in options.items() if str(text).lower() in low]
    return hits[0] if len(hits) == 1 else None


def _vlmevalkit(answer: str, options: Mapping[str, str]) -> str | None:
    letter = _kit_option(answer, options)
    if letter is None:  # refusal: 'Z', never an option
        return None
    if letter:
        return letter
    return _kit_text(answer, options)


def _from_json(text: str) -> str | None:
    """The value under an answer key of a JSON object in ``text`` (a fenced block or the whole text), if any."""
    candidates = re.findall(r'```(?:json)?\s*(\{.*?\})\s*```', text, re.DOTALL) or re.findall(r'\{[^{}]*\}', text)
    for blob in candidates:
        try:
            obj = json.loads(blob)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict):
            for key, value in obj.items():
                if str(key).strip().lower() in _JSON_KEYS and isinstance(value, (str, int)):
                    return str(value)
    return None


def _clean(text: str) -> str:
    text = re.sub(r'[*_`]+', ' ', text)  # markdown emphasis, code marks
    return re.sub('[\"“”‘’]|(?<![A-Za-z])\'|\'(?![A-Za-z])', ' ', text)  # quotes (not apostrophes)


def _cue_letter(m: re.Match, text: str) -> str | None:
    """The cue's letter, upper-cased; a lower-case one only when no word follows it ("answer is a cat")."""
    letter = m.group(1)
    if letter.islower() and re.match(r'\s+[a-z]', text[m.end(1):]):
        return None
    return letter.upper()


def _letters(text: str, options: Mapping[str, str]) -> tuple[set[str], set[str]]:
    """(letters stated as the answer, all letters standing for a choice) in ``text`` (module docstring)."""
    letters = set(options)
    cued = {x for m in _STRONG_CUE.finditer(text) if (x := _cue_letter(m, text)) in letters}
    named = set(cued) | {x for m in _WEAK_CUE.finditer(text) if (x := _cue_letter(m, text)) in letters}
    patterns = (r'^\s*[(\[]?\s*([A-Z])\s*[)\].:]?\s*$',  # the whole answer: C, (C), C.
                r'[(\[]\s*([A-Z])\s*[)\]]',  # (C) [C]
                r'(?m)^\s*([A-Z])\s*[.):](?=\s|$)',  # "C. 3" at a line start
                r'(?<![A-Za-z0-9\'’-])([B-HJ-Z])(?![A-Za-z0-9\'’-])')  # bare, not A / I
    for pattern in patterns:
        named |= {m.group(1) for m in re.finditer(pattern, text) if m.group(1) in letters}
    named |= {m.group(1) for m in _IS_CORRECT.finditer(text) if m.group(1) in letters}
    # A / I as letters: not followed by a word ("A dog", "I think"), or beside another letter ("A or B")
    for m in re.finditer(r'(?<![A-Za-z0-9\'’-])([AI])(?![A-Za-z0-9\'’-])', text):
        after, before = text[m.end():], text[:m.start()]
        if m.group(1) in letters and (not re.match(r'\s+[a-z]', after) or
                                      re.match(r'\s*(?:,|/|or\b|and\b)\s*[(\[]?[A-Z](?![A-Za-z])', after) or
                                      re.search(r'(?<![A-Za-z])[A-Z][)\]]?\s*(?:,|/|or|and)\s*$', before)):
            named.add(m.group(1))
    return cued, named


def _text_matches(text: str, options: Mapping[str, str]) -> set[str]:
    low = text.lower()
    hits = set()
    for letter, option in options.items():
        opt = str(option).strip().lower()
        if not opt:
            continue
        if re.fullmatch(r'\d+', opt):
            pattern = rf'(?<![\d.]){re.escape(opt)}(?![\d]|\.\d)'
        else:
            pattern = rf'(?<!\w){re.escape(opt)}(?!\w)'
        if re.search(pattern, low):
            hits.add(letter)
    return hits


def _strict(answer: str, options: Mapping[str, str]) -> str | None:
    text = answer.strip()
    if not text or KIT_API_FAILURE in text or any(r in text for r in KIT_REFUSALS):
        return None
    value = _from_json(text)
    if value is not None:
        return _strict(value, options) if value.strip() != text else None
    text = _clean(text).strip()
    none = none_letter(options)
    if none is not None and re.match(r'[\s(\[]*none of the above', text, re.IGNORECASE):
        return none
    first = re.match(r'\s*[(\[]?\s*([A-Z])\s*[.):\]]\s*(.+?)\s*\.?\s*$', text.split('\n')[0])
    if first and first.group(1) in options:  # "E. None of the above…" where E's text is another: two choices
        said = [k for k, v in options.items() if str(v).strip().lower() == first.group(2).strip().lower()]
        if said and said[0] != first.group(1):
            return None
    cued, named = _letters(text, options)
    if cued:
        return next(iter(cued)) if len(cued) == 1 else None
    if named:
        return next(iter(named)) if len(named) == 1 else None
    texts = _text_matches(text, options)
    return next(iter(texts)) if len(texts) == 1 else None


def extract_choice(prediction: Any, options: Mapping[str, str], policy: Policy = 'strict',
                   judge: Callable[[str, Mapping[str, str]], str | None] | None = None) -> str | None:
    """The option letter a free-text ``prediction`` chose, or None (module docstring; never a guess).

    Args:
        prediction: the model's answer (None or NaN: no answer).
        options: letter → option text, e.g. ``{'A': '1', 'B': '2', 'C': 'None of the above choices are correct'}``
            (:func:`parse_choices`).
        policy: ``'strict'`` (default) or ``'vlmevalkit'`` (the benchmark kit's rules, exactly).
        judge: asked when the rules find nothing (``strict`` only): ``judge(prediction, options)``; its answer
            counts only if it is one of the option letters.

    Raises:
        ValueError: an unknown policy, no options, an option key that is not one upper-case letter.
    """
    if policy not in ('strict', 'vlmevalkit'):
        raise ValueError(f"policy={policy!r}: use 'strict' or 'vlmevalkit'.")
    if not options:
        raise ValueError('extract_choice needs at least one option.')
    bad = [k for k in options if not (isinstance(k, str) and len(k) == 1 and k in string.ascii_uppercase)]
    if bad:
        raise ValueError(f'Option keys must be single upper-case letters, got {bad}.')
    if prediction is None or (isinstance(prediction, float) and prediction != prediction):
        return None
    text = str(prediction)
    if policy == 'vlmevalkit':
        if judge is not None:
            raise ValueError("judge= is for policy='strict' (the kit's judge is an LLM API with a random fallback).")
        return _vlmevalkit(text, options)
    choice = _strict(text, options)
    if choice is None and judge is not None and text.strip():
        verdict = judge(text, dict(options))
        choice = verdict.strip().upper() if isinstance(verdict, str) and verdict.strip().upper() in options else None
    return choice


# ------------------------------------------------------------------------------------------------ report
def parse_match_type(value: Any, policy: Policy = 'strict', where: str = 'match_type') -> list[int]:
    """``"[1, 5, 8]"`` → ``[1, 5, 8]`` (1-based ids into :data:`MATCH_TYPES`).

    ``'vlmevalkit'``: as the kit — unparsable → ``[1, 5]``; an id outside 1–8 → 2 (SP); repeats kept.
    ``'strict'``: ValueError naming ``where`` for anything but a non-empty list of ids 1–8; repeats dropped.
    """
    try:
        parsed = ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, SyntaxError):
        parsed = None
    if isinstance(parsed, int) and not isinstance(parsed, bool):
        parsed = [parsed]
    ok = isinstance(parsed, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in parsed)
    if policy == 'vlmevalkit':
        if not ok:
            return [1, 5]
        return [x if 1 <= x <= len(MATCH_TYPES) else 2 for x in parsed]
    if not ok or not parsed or any(not 1 <= x <= len(MATCH_TYPES) for x in parsed):
        raise ValueError(f'{where}: match_type {value!r} is not a list of type ids 1–{len(MATCH_TYPES)} '
                         f'({", ".join(f"{i + 1}={t}" for i, t in enumerate(MATCH_TYPES))}).')
    return list(dict.fromkeys(parsed))


@dataclass
class MMVMReport:
    """Accuracies (fractions) with their counts; ``errors``: rows left out (strict policy), each named."""

    overall: float
    count: int
    per_type: dict[str, float | None]
    per_type_count: dict[str, int]
    by_candidates: dict[str, float | None] = field(default_factory=dict)
    by_candidates_count: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    policy: str = 'strict'

    def as_dict(self) -> dict[str, Any]:
        return dict(overall=self.overall, count=self.count, per_type=self.per_type,
                    per_type_count=self.per_type_count, by_candidates=self.by_candidates,
                    by_candidates_count=self.by_candidates_count, errors=self.errors, policy=self.policy)

    def rows(self) -> list[tuple[str, float | None, int]]:
        """(name, accuracy, count) for Overall, the eight types, then the candidate-count buckets."""
        out: list[tuple[str, float | None, int]] = [('Overall', self.overall, self.count)]
        out += [(t, self.per_type[t], self.per_type_count[t]) for t in MATCH_TYPES]
        out += [(f'cands {k}', self.by_candidates[k], self.by_candidates_count[k]) for k in self.by_candidates]
        return out


CANDIDATE_BUCKETS = (4, 8, 12)


def mmvm_report(match_types: Sequence[Any], hits: Sequence[bool | int], policy: Policy = 'strict', *,
                num_candidates: Sequence[int] | None = None, indices: Sequence[Any] | None = None) -> MMVMReport:
    """Overall and per-type accuracy (module docstring) of questions with ``hits`` (1/True = right).

    Args:
        match_types: each question's ``match_type`` (``"[1, 5]"`` or a list).
        hits: whether each was answered right.
        policy: how malformed types are handled (:func:`parse_match_type`); ``'strict'`` leaves such a row out of
            the per-type accuracies (it still counts overall) and names it in ``errors``.
        num_candidates: each question's number of candidate objects (options without the none option): adds
            accuracy over the questions with at most 4, 8, 12 candidates, and all.
        indices: each question's index, for the error messages (default: its position).

    Raises:
        ValueError: lengths differ, or no question.
    """
    n = len(hits)
    if n == 0:
        raise ValueError('mmvm_report needs at least one question.')
    if len(match_types) != n or (num_candidates is not None and len(num_candidates) != n) or \
            (indices is not None and len(indices) != n):
        raise ValueError(f'mmvm_report: {len(match_types)} match types, {n} hits'
                         f'{"" if num_candidates is None else f", {len(num_candidates)} candidate counts"}'
                         f'{"" if indices is None else f", {len(indices)} indices"}: give one per question.')
    names = list(indices) if indices is not None else list(range(n))
    per: dict[int, list[int]] = {i + 1: [] for i in range(len(MATCH_TYPES))}
    errors = []
    for name, mt, hit in zip(names, match_types, hits):
        try:
            ids = parse_match_type(mt, policy, where=f'question {name}')
        except ValueError as err:
            errors.append(str(err))
            continue
        for i in ids:
            per[i].append(int(bool(hit)))
    hits01 = [int(bool(h)) for h in hits]

    def mean(xs: list[int]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    report = MMVMReport(overall=sum(hits01) / n, count=n,
                        per_type={t: mean(per[i + 1]) for i, t in enumerate(MATCH_TYPES)},
                        per_type_count={t: len(per[i + 1]) for i, t in enumerate(MATCH_TYPES)},
                        errors=errors, policy=policy)
    if num_candidates is not None:
        for k in CANDIDATE_BUCKETS:
            sel = [h for h, c in zip(hits01, num_candidates) if c <= k]
            report.by_candidates[f'<={k}'], report.by_candidates_count[f'<={k}'] = mean(sel), len(sel)
        report.by_candidates['all'], report.by_candidates_count['all'] = report.overall, n
    return report


# ------------------------------------------------------------------------------------------------ circular
def rotate_options(options: Mapping[str, str], answer: str, shift: int) -> tuple[dict[str, str], str]:
    """The options with the candidate texts rotated by ``shift`` (the none option stays last), and the letter
    the answer has there. Rotation r of n candidates puts candidate (i + r) mod n at letter i."""
    if answer not in options:
        raise ValueError(f'answer {answer!r} is not among the options {sorted(options)}.')
    letters = list(options)
    none = none_letter(options)
    cands = [k for k in letters if k != none]
    n = len(cands)
    if n == 0:
        raise ValueError('rotate_options: no candidate options to rotate.')
    texts = [options[k] for k in cands]
    rotated = {cands[i]: texts[(i + shift) % n] for i in range(n)}
    if none is not None:
        rotated[none] = options[none]
    if answer == none:
        return rotated, answer
    new_pos = (cands.index(answer) - shift) % n
    return {k: rotated[k] for k in letters}, cands[new_pos]


def circular_hits(per_rotation: Sequence[Sequence[bool | int]]) -> list[int]:
    """Per question, 1 if it was right in every rotation (``per_rotation[q]``: its hits), else 0."""
    out = []
    for q, hits in enumerate(per_rotation):
        if len(hits) == 0:
            raise ValueError(f'circular_hits: question {q} has no rotation.')
        out.append(int(all(bool(h) for h in hits)))
    return out
