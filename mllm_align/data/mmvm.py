"""The MMVM benchmark (CoLVA paper) in its released layout, and the prompt its evaluation kit builds.

    <root>/mllm_match_eval_full.tsv      one row per question (tab-separated, a header row):
        index, question, answer, match_type, image_path, choices[, pure_question, choices_head, …]
    <root>/match_bench/case_xxx/
        FRAME00.jpg        the query image, the query object's contour drawn (cyan)
        FRAME00_ORI.jpg    the same image, clean (what a vision expert sees)
        FRAME00.json       the query object's mask
        FRAME01_CAND.jpg   the candidate image: each candidate's contour and white numeric ID tag drawn
        FRAME01_ORI.jpg    the same image, clean
        FRAME01_CAND.json  the candidates' masks, in ID order

Columns: ``question`` is the whole text prompt (the kit sends ``[image, image, question]``: every path of
``image_path`` then the text; the options are already in the question); ``answer`` the right letter;
``choices`` the options, one ``LETTER. text`` per line, the last always "None of the above choices are
correct" (:func:`~mllm_align.metrics.mmvm.parse_choices`); ``match_type`` a list literal of type ids 1–8
(:data:`~mllm_align.metrics.mmvm.MATCH_TYPES`); ``image_path`` a list literal of paths relative to the bench
folder ``root`` (or one path). Extra columns are kept in :attr:`MMVMCase.extra`.

Mask JSON (``FRAME00.json`` / ``FRAME01_CAND.json``), as the mini-bench builder writes it::

    {"width": W, "height": H, "objects": [{"id": 1, "segmentation": RLE | [[x1, y1, x2, y2, …], …]}, …]}

RLE in COCO's form (``{"size": [H, W], "counts": …}``, via pycocotools) or polygons in pixels. A top-level
list of objects, or the key ``annotations`` instead of ``objects``, is read the same way. (The released
benchmark's JSON schema could not be checked offline; a file in another schema is an error that names it.)
"""
from __future__ import annotations

import ast
import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics.mmvm import none_letter, parse_choices
from .visual_prompts import decode_mask

__all__ = ['MMVM_TSV', 'MMVMCase', 'build_prompt', 'case_masks', 'load_mmvm', 'read_case_masks']

MMVM_TSV = 'mllm_match_eval_full.tsv'
REQUIRED_COLUMNS = ('index', 'question', 'answer', 'match_type', 'image_path', 'choices')
CASE_FILES = ('FRAME00.jpg', 'FRAME00_ORI.jpg', 'FRAME00.json', 'FRAME01_CAND.jpg', 'FRAME01_ORI.jpg',
              'FRAME01_CAND.json')


@dataclass(frozen=True)
class MMVMCase:
    """One question. ``images``: the prompt's images in order (absolute paths); ``options``: letter → text."""

    index: str
    question: str
    answer: str
    options: dict[str, str]
    match_type: str
    images: tuple[Path, ...]
    case_dir: Path | None
    line: int
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def num_candidates(self) -> int:
        """Options other than "None of the above"."""
        return len(self.options) - (none_letter(self.options) is not None)


def _list_cell(value: str) -> list[str]:
    text = value.strip()
    if text.startswith('['):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, (list, tuple)) and all(isinstance(x, str) for x in parsed):
            return list(parsed)
        raise ValueError(f'{value!r} is not a list of paths')
    return [text] if text else []


def load_mmvm(root: str | os.PathLike, tsv: str | os.PathLike | None = None, *, check_files: bool = True,
              limit: int | None = None) -> list[MMVMCase]:
    """The questions of an MMVM directory (module docstring), in TSV order.

    Args:
        root: the folder holding ``match_bench/`` and the TSV.
        tsv: the TSV (default ``<root>/mllm_match_eval_full.tsv``); its image paths are relative to ``root``.
        check_files: check that every case folder holds its six files (a missing one is named).
        limit: the first N questions only.

    Raises:
        FileNotFoundError: no TSV; a missing image or case file (the question's index and line, the file).
        ValueError: a missing column, a repeated index, an answer that is not one of the options, unparsable
            options or image paths, no candidate option — each naming the TSV line and index.
    """
    root = Path(root)
    path = Path(tsv) if tsv is not None else root / MMVM_TSV
    if not path.is_file():
        raise FileNotFoundError(f'MMVM TSV {path} does not exist: download mllm_match_eval_full.tsv and '
                                'match_bench.zip into one folder (or build the mini bench: python '
                                'data/prepare_real.py --only mmvm_mini).')
    csv.field_size_limit(1 << 24)
    with path.open(newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f, delimiter='\t')
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f'{path}: missing column(s) {missing} (has {reader.fieldnames}).')
        rows = list(reader)
    cases: list[MMVMCase] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows, 2):  # line 1 is the header
        if limit is not None and len(cases) >= limit:
            break
        index = str(row['index']).strip()
        where = f'{path} line {n} (index {index})'
        if index in seen:
            raise ValueError(f'{where}: index {index} repeats line {seen[index]}.')
        seen[index] = n
        options = parse_choices(row['choices'], where=f'{where}, choices')
        answer = str(row['answer']).strip()
        if answer not in options:
            raise ValueError(f'{where}: answer {answer!r} is not one of the options {sorted(options)}.')
        cand = len(options) - (none_letter(options) is not None)
        if cand < 1:
            raise ValueError(f'{where}: no candidate option (only "None of the above").')
        try:
            rel = _list_cell(row['image_path'])
        except ValueError as err:
            raise ValueError(f'{where}: image_path {err}.') from None
        if not rel:
            raise ValueError(f'{where}: no image_path.')
        images = tuple((root / p).resolve() for p in rel)
        case_dir = images[0].parent if images[0].parent.name.startswith('case_') else None
        if check_files:
            for img in images:
                if not img.is_file():
                    raise FileNotFoundError(f'{where}: image {img} is missing.')
            if case_dir is not None:
                for name in CASE_FILES:
                    if not (case_dir / name).is_file():
                        raise FileNotFoundError(f'{where}: case folder {case_dir} has no {name}.')
        extra = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS and k is not None}
        cases.append(MMVMCase(index, row['question'], answer, options, str(row['match_type']).strip(), images,
                              case_dir, n, extra))
    if not cases:
        raise ValueError(f'{path}: no questions.')
    return cases


def build_prompt(case: MMVMCase) -> list[dict[str, Any]]:
    """The kit's message list: ``[{'type': 'image', 'value': path}, …, {'type': 'text', 'value': question}]``."""
    return [dict(type='image', value=str(p)) for p in case.images] + [dict(type='text', value=case.question)]


def _object_list(doc: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        for key in ('objects', 'annotations'):
            if isinstance(doc.get(key), list):
                return doc[key]
    raise ValueError(f'{path}: expected {{"objects": [...]}} (or a list of objects) with a `segmentation` each; '
                     f'got {type(doc).__name__} with keys {sorted(doc) if isinstance(doc, dict) else []}.')


def _decode(seg: Any, height: int, width: int, where: str) -> np.ndarray:
    try:
        return decode_mask(seg, height, width)
    except ValueError as err:
        raise ValueError(f'{where}: {err}') from None


def read_case_masks(case_dir: str | os.PathLike, frame: str = 'FRAME01_CAND') -> list[np.ndarray]:
    """The object masks ``[H, W]`` bool of one frame's JSON (``FRAME00``: the query; ``FRAME01_CAND``: the
    candidates in ID order), checked against the clean image's size.

    Raises:
        FileNotFoundError: no such JSON or clean image. ValueError: another schema, a mask outside the image,
        an empty mask, no object — naming the file and object.
    """
    from PIL import Image

    case_dir = Path(case_dir)
    path = case_dir / f'{frame}.json'
    ori = case_dir / f'{frame.split("_")[0]}_ORI.jpg'
    for p in (path, ori):
        if not p.is_file():
            raise FileNotFoundError(f'MMVM case {case_dir}: {p.name} is missing.')
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f'{path} is not valid JSON ({err.msg}, line {err.lineno}).') from None
    with Image.open(ori) as im:
        width, height = im.size
    if isinstance(doc, dict) and (doc.get('width', width), doc.get('height', height)) != (width, height):
        raise ValueError(f'{path}: says {doc.get("width")}×{doc.get("height")}, but {ori.name} is {width}×{height}.')
    objects = _object_list(doc, path)
    if not objects:
        raise ValueError(f'{path}: no object.')
    masks = []
    for k, obj in enumerate(objects):
        where = f'{path} object {obj.get("id", k) if isinstance(obj, dict) else k}'
        if not isinstance(obj, dict) or 'segmentation' not in obj:
            raise ValueError(f'{where}: no `segmentation`.')
        mask = _decode(obj['segmentation'], height, width, where)
        if not mask.any():
            raise ValueError(f'{where}: the mask is empty.')
        masks.append(mask)
    return masks


def case_masks(case: MMVMCase) -> tuple[np.ndarray, list[np.ndarray]]:
    """(query mask, candidate masks) of a question; its number of candidates must match its options."""
    if case.case_dir is None:
        raise ValueError(f'Question {case.index}: its images are not in a case_xxx folder; no masks.')
    query = read_case_masks(case.case_dir, 'FRAME00')
    cands = read_case_masks(case.case_dir, 'FRAME01_CAND')
    if len(query) != 1:
        raise ValueError(f'{case.case_dir}/FRAME00.json: {len(query)} objects; the query is one object.')
    if len(cands) != case.num_candidates:
        raise ValueError(f'{case.case_dir}/FRAME01_CAND.json: {len(cands)} candidates, but question {case.index} '
                         f'has {case.num_candidates} candidate options.')
    return query[0], cands
