"""CoLVA's object-matching SFT data: the MMVMData layout, visual prompts drawn per item, two conversation forms.

CoLVA (Zhou et al., arXiv:2501.04670, Sec. 4.2) fine-tunes on MMVM-style matching questions built from
video-segmentation pairs (the ``zhouyik/MMVMData`` release). Reference: ``MatchDataset_load_fn``
(``process_functions/annotation_json_file_load.py``), ``InternVLDataset.multi_modal_multi_image_get_item`` and
``map_fns/match_map_fn.py`` of github.com/zhouyiks/CoLVA at 77a681f.

Layout (one JSON list per file; the release ships ``mllm_match_choices_sft.json`` and
``mllm_match_reasoning_sft.json``)::

    [{"file_names": ["./<seq>/00010.jpg", "./<seq>/00042.jpg"],   # image 1 (query), image 2 (candidates)
      "pos_annotations": [[QUERY_SEG], [TARGET_SEG] or []],       # per image: the query; the same object in image 2
      "neg_annotations": [[], [SEG, SEG, ...]],                   # per image: the other candidates of image 2
      "is_disappear": false,                                      # true: the query is not among the candidates
      "vprompt_type": "mask",                                     # choice-only records; "bbox" is refused here
      "description": "...",                                       # reasoning records: why the answer is right
      "match_type": [3, 6],                                       # ours, optional (ids into MATCH_TYPES)
      "id": "..."}, ...]                                          # ours, optional (default: <file>#<item>)

A ``SEG`` is COCO RLE (``{"size": [h, w], "counts": str | list}``) or polygons (``[[x1, y1, …], …]``) in the
image's pixels. Candidates are ``pos_annotations[1] + neg_annotations[1]``: the target (when there is one) first.
The answer is the target unless ``is_disappear`` or there is none ("None of the above"). Paths are relative to
``image_root`` (default: the JSON's folder; the released JSONs name paths relative to their ``data/`` folder, which
its loader prepends as ``./data/``). Not learnt from the release, and defined here: ``match_type`` and ``id``
(absent in the released records); image sizes are read from the image files (the release records none), and an
RLE whose ``size`` differs is an error; a record must have exactly one query mask and at most one target.

Per item (all draws from ``numpy.random.default_rng((seed, index))``, so an item is deterministic): a query colour
(from ``query_colours``; its name goes into the question); the candidates' IDs, a random permutation of 1..K
(:func:`~mllm_align.data.visual_prompts.assign_ids`); image 1 drawn with the query's contour, image 2 with every
candidate's contour and ID tag (:mod:`~mllm_align.data.visual_prompts`); options ``A. 1`` … over the sorted IDs and
"None of the above choices are correct". The first human turn is, as in the released code::

    Image-1: <image>
    Image-2: <image>
    Objects in Image-1: <query object><VPT_CONTEXT>.
    Objects in Image-2: <object-1><VPT_CONTEXT>, <object-2><VPT_CONTEXT>, …, <object-K><VPT_CONTEXT>.

    {question with the colour} Please make a choice from the following options:␣
    A. 1
    …
    {letter}. None of the above choices are correct

(``␣``: a space; the object block ends with ``.\\n`` and the question follows after one more ``\\n``).
Choice-only form: the reply is the answer's option letter. Reasoning form (two rounds): the letter, then the human
asks ``Why?`` and the reply is a lead-in phrase + the record's ``description``. The question and lead-in phrases are
a seeded choice from :data:`QUESTIONS` / :data:`REASONING_PREFIXES` (the first question
is the MMVM benchmark's own wording).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, VPT_TOKEN
from ..metrics.mmvm import MATCH_TYPES
from .bad_samples import BadSampleError, MissingImageError, SkipsBadSamples
from .image_loading import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLargeError, UnreadableImageError, load_image
from .image_processing import has_patch_grid, process_image_inputs
from .llava_dataset import build_from_cfg
from .sa1b import objects_on_grid
from .templates import ConversationError, build_generation_prompt, encode_conversation, get_template
from .visual_prompts import (
    MAX_CANDIDATES,
    NAMED_COLOURS,
    assign_ids,
    decode_mask,
    draw_candidates,
    draw_query,
    options_for_ids,
)

__all__ = ['CHOICES_INTRO', 'MMVM_SFT_BAD_SAMPLE_CAUSES', 'MMVMSFTDataset', 'MMVMSFTRecord', 'QUESTIONS',
           'REASONING_PREFIXES', 'REASONING_QUESTION', 'build_conversation', 'load_mmvm_sft', 'match_prompt_item',
           'object_block', 'parse_record', 'record_masks']

#: The question asked (``{colour}``: the query contour's colour name); the first is MMVM's own wording.
QUESTIONS = (
    "Here are two images. In the second image, I have marked several visual objects with their contours in "
    "different colors, and each is identified by a white numeric ID against a background that matches the "
    "contour's color. Could you please tell me which of these marked objects is the same as the object marked "
    "with a {colour} contour in the first image?",
    "Two images are shown. In the second one, several objects are outlined in distinct colours, each labelled with "
    "a white number on a box of its outline's colour. Which labelled object is the object outlined in {colour} in "
    "the first image?",
    "Compare the two images. The first image outlines one object in {colour}; the second outlines several objects "
    "and tags each with a white number on a box of the outline's colour. Which tagged object is that same object?",
    "Look at both images: among the numbered, colour-outlined objects of the second image, find the object that "
    "the {colour} outline marks in the first image.",
)
#: Put after the question, then the options one per line (MMVM's wording, trailing space included).
CHOICES_INTRO = ' Please make a choice from the following options: \n'
REASONING_QUESTION = 'Why?'
#: Lead-ins of the reasoning reply, before the record's ``description``.
REASONING_PREFIXES = ('The reasons are as follows: ', 'Here is why: ', 'What the two images show: ',
                      'This answer rests on these observations: ')
QUERY_OBJECT = '<query object>'

MMVM_SFT_BAD_SAMPLE_CAUSES: dict[str, str] = {
    'malformed_record': 'fix the record (layout: mllm_align/data/mmvm_sft.py) or remove it',
    'unsupported_prompt_type': 'only mask prompts ("vprompt_type": "mask") are supported; remove bbox records',
    'no_candidates': 'give image 2 at least one candidate mask (pos_annotations[1] + neg_annotations[1])',
    'too_many_candidates': f'keep at most {MAX_CANDIDATES} candidates (one option letter each, and one for '
                           '"None of the above")',
    'missing_image': 'check `image_root` and `file_names`, or remove the record',
    'unreadable_image': 'replace the image file or remove the record',
    'image_too_large': 'or remove the record (the limit guards against decompression bombs)',
    'mask_size_mismatch': "make each RLE's `size` [h, w] the size of its image",
    'bad_mask': 'fix the segmentation (COCO RLE or polygons inside the image)',
    'empty_mask': 'give every object at least one pixel, or remove it',
    'object_vanishes_on_grid': 'the object is too small for the vision expert: remove it from the record, or '
                               'lower mask_threshold / raise expert_image_size',
    'no_description': "the reasoning form needs the record's `description`; use form='choice' or 'auto'",
    'too_long': 'raise max_length, or remove candidates',
}
_SKIP_HINT = " Set on_bad_sample='skip' to skip such samples (they are counted and logged)."


@dataclass(frozen=True)
class MMVMSFTRecord:
    """One matching question: ``images`` (image 1, image 2), the query's and candidates' segmentations (still
    encoded: decoded against the images' sizes by :func:`record_masks`), ``answer`` the target's index into
    ``candidates`` (None: "None of the above"), ``match_types`` names from ``MATCH_TYPES``, ``description``
    (reasoning text or None), ``where`` (file and item, for messages)."""

    id: str
    images: tuple[Path, Path]
    query: Any
    candidates: tuple[Any, ...]
    answer: int | None
    match_types: tuple[str, ...]
    description: str | None
    where: str


def _bad(cause: str, where: str, what: str, hint: str = '', *, error: type[BadSampleError] = BadSampleError
         ) -> BadSampleError:
    return error(f'{where}: {what}; {MMVM_SFT_BAD_SAMPLE_CAUSES[cause]}.{hint}', cause)


def _match_types(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= len(MATCH_TYPES):
            out.append(MATCH_TYPES[v - 1])
        elif isinstance(v, str) and v in MATCH_TYPES:
            out.append(v)
        else:
            raise _bad('malformed_record', where, f'match_type {value!r}: give ids 1–8 or names of {MATCH_TYPES}')
    return tuple(out)


def parse_record(raw: Any, where: str, image_root: str | os.PathLike, index: int = 0) -> MMVMSFTRecord:
    """One raw MMVMData record (module docstring) → :class:`MMVMSFTRecord`; nothing is read from disk.

    Raises:
        BadSampleError: cause ``malformed_record`` (a missing or mistyped key, several query masks or targets),
        ``unsupported_prompt_type``, ``no_candidates``, ``too_many_candidates`` — naming ``where``.
    """
    if not isinstance(raw, dict):
        raise _bad('malformed_record', where, f'expected a JSON object, found {type(raw).__name__}')
    sample_id = str(raw.get('id', f'{Path(where.split(",")[0]).stem}#{index}'))
    where = f'{where} (id {sample_id!r})'
    names = raw.get('file_names', raw.get('image'))
    if not (isinstance(names, list) and len(names) == 2 and all(isinstance(n, str) for n in names)):
        raise _bad('malformed_record', where, f'file_names must be a list of two image paths, found {names!r}')
    pos, neg = raw.get('pos_annotations'), raw.get('neg_annotations', [[], []])
    for key, val in (('pos_annotations', pos), ('neg_annotations', neg)):
        if not (isinstance(val, list) and len(val) == 2 and all(isinstance(v, list) for v in val)):
            raise _bad('malformed_record', where, f'{key} must be [[image-1 segmentations], [image-2 segmentations]], '
                                                  f'found {type(val).__name__}')
    if raw.get('vprompt_type', 'mask') != 'mask':
        raise _bad('unsupported_prompt_type', where, f'vprompt_type is {raw.get("vprompt_type")!r}')
    if len(pos[0]) != 1:
        raise _bad('malformed_record', where, f'pos_annotations[0] has {len(pos[0])} masks; the query is one object')
    if len(pos[1]) > 1:
        raise _bad('malformed_record', where, f'pos_annotations[1] has {len(pos[1])} masks; at most one target')
    candidates = tuple(pos[1]) + tuple(neg[1])
    if not candidates:
        raise _bad('no_candidates', where, 'image 2 has no candidate')
    if len(candidates) > MAX_CANDIDATES:
        raise _bad('too_many_candidates', where, f'{len(candidates)} candidates')
    disappear = raw.get('is_disappear', False)
    if not isinstance(disappear, bool):
        raise _bad('malformed_record', where, f'is_disappear must be true or false, found {disappear!r}')
    description = raw.get('description')
    if description is not None and not isinstance(description, str):
        raise _bad('malformed_record', where, f'description must be a string, found {type(description).__name__}')
    root = Path(image_root)
    images = tuple(root / (n[2:] if n.startswith('./') else n) for n in names)
    answer = 0 if pos[1] and not disappear else None
    return MMVMSFTRecord(sample_id, images, pos[0][0], candidates, answer,  # type: ignore[arg-type]
                         _match_types(raw.get('match_type'), where), description or None, where)


def _read_json_list(path: Path) -> list:
    if not path.is_file():
        raise FileNotFoundError(f'MMVM SFT file {path} does not exist (build the mini set: python '
                                'data/prepare_real.py --only mmvm_sft_mini).')
    try:
        doc = json.loads(path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as err:
        raise ValueError(f'{path} is not valid JSON ({err.msg}, line {err.lineno}).') from None
    if not isinstance(doc, list) or not doc:
        raise ValueError(f'{path}: expected a non-empty JSON list of records (layout: mllm_align/data/mmvm_sft.py).')
    return doc


def load_mmvm_sft(data_path: str | os.PathLike, image_root: str | os.PathLike | None = None
                  ) -> list[MMVMSFTRecord]:
    """Every record of one MMVMData JSON file, parsed (:func:`parse_record`); the first bad one raises."""
    path = Path(data_path)
    root = Path(image_root) if image_root is not None else path.parent
    return [parse_record(raw, f'{path}, item {k}', root, k) for k, raw in enumerate(_read_json_list(path))]


def _decode(seg: Any, size: tuple[int, int], where: str) -> np.ndarray:
    w, h = size
    if isinstance(seg, dict) and isinstance(seg.get('size'), (list, tuple)) and list(seg['size']) != [h, w]:
        raise _bad('mask_size_mismatch', where, f'RLE size {list(seg["size"])}, but the image is {w}×{h} '
                                                f'(size [{h}, {w}])')
    try:
        mask = decode_mask(seg, h, w)
    except (ValueError, TypeError, KeyError) as err:
        raise _bad('bad_mask', where, str(err)) from None
    if not mask.any():
        raise _bad('empty_mask', where, 'the mask is empty')
    return mask


def record_masks(record: MMVMSFTRecord, sizes: Sequence[tuple[int, int]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(query mask ``[H1, W1]``, candidate masks ``[H2, W2]`` in record order) for images of ``sizes`` (w, h).

    Raises:
        BadSampleError: ``mask_size_mismatch``, ``bad_mask`` (outside the image, unknown form), ``empty_mask``.
    """
    query = _decode(record.query, sizes[0], f'{record.where}, query mask')
    cands = [_decode(s, sizes[1], f'{record.where}, candidate {j}') for j, s in enumerate(record.candidates)]
    return query, cands


def object_block(num_candidates: int) -> str:
    """``'Objects in Image-1: <query object><VPT_CONTEXT>.\\nObjects in Image-2: <object-1><VPT_CONTEXT>, …'``
    (ending ``.\\n``), the candidates in ID order."""
    cands = ', '.join(f'<object-{i}>{VPT_TOKEN}' for i in range(1, num_candidates + 1))
    return f'Objects in Image-1: {QUERY_OBJECT}{VPT_TOKEN}.\nObjects in Image-2: {cands}.\n'


def build_conversation(colour: str, num_candidates: int, answer_letter: str, question: int = 0,
                       description: str | None = None, prefix: int = 0) -> list[dict[str, str]]:
    """LLaVA turns of one matching question (module docstring): choice-only when ``description`` is None, else the
    two-round reasoning form. ``question`` / ``prefix`` index :data:`QUESTIONS` / :data:`REASONING_PREFIXES`."""
    options = options_for_ids(num_candidates)
    if answer_letter not in options:
        raise ValueError(f'answer {answer_letter!r} is not one of the options {sorted(options)}.')
    choices = ''.join(f'{letter}. {text}\n' for letter, text in options.items())
    user = (f'Image-1: {DEFAULT_IMAGE_TOKEN}\nImage-2: {DEFAULT_IMAGE_TOKEN}\n{object_block(num_candidates)}\n'
            f'{QUESTIONS[question].format(colour=colour)}{CHOICES_INTRO}{choices}')
    turns = [{'from': 'human', 'value': user}, {'from': 'gpt', 'value': answer_letter}]
    if description is not None:
        turns += [{'from': 'human', 'value': REASONING_QUESTION},
                  {'from': 'gpt', 'value': REASONING_PREFIXES[prefix] + description}]
    return turns


def _to_expert(image: Image.Image, size: int) -> torch.Tensor:
    arr = np.asarray(image.convert('RGB').resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return torch.from_numpy(arr / 255.0).permute(2, 0, 1)  # (3, E, E)


def _mask_to_expert(mask: np.ndarray, size: int) -> np.ndarray:
    im = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im) > 127


def match_prompt_item(images: Sequence[Image.Image], query_mask: np.ndarray, candidate_masks: Sequence[np.ndarray],
                      tokenizer: Any, template: str, image_processor: Any, expert_image_size: int, *,
                      colour: str = 'cyan', seed: int = 0, question: int = 0, pad_image_to_square: bool = False,
                      system: str | None = None, sample_id: str = 'case') -> tuple[dict[str, Any], dict[str, str],
                                                                                 list[int]]:
    """One matching case as a generation item, drawn and worded as in training (``MMVMSFTDataset``).

    Args:
        images: [image 1 (the query's), image 2 (the candidates')], clean.
        query_mask: ``[H1, W1]`` bool; candidate_masks: K masks ``[H2, W2]`` (K ≤ ``MAX_CANDIDATES``).
        colour: the query contour's named colour; seed: the candidates' ID permutation; question: index into
            :data:`QUESTIONS`.

    Returns:
        ``(item, options, ids)``: the item (``input_ids`` ending with an open assistant turn, ``labels`` all
        ignored, the base's image entries of the drawn images, ``expert_pixel_values [2, 3, E, E]``,
        ``expert_masks``), the options ``{letter: text}`` and ``ids[j]``, the tag drawn on candidate j (option
        letter ``i`` names ID ``i + 1``).

    Raises:
        ValueError: not two images, no candidates or more than ``MAX_CANDIDATES``, a mask of the wrong size or
            empty (named).
    """
    if len(images) != 2:
        raise ValueError(f'a matching case has 2 images (query, candidates), got {len(images)}.')
    K = len(candidate_masks)
    if not 1 <= K <= MAX_CANDIDATES:
        raise ValueError(f'{K} candidates: give 1 to {MAX_CANDIDATES} (one option letter each).')
    query = np.asarray(query_mask, dtype=bool)
    cands = [np.asarray(m, dtype=bool) for m in candidate_masks]
    for what, m, im in [('query mask', query, images[0])] + [(f'candidate {j}', m, images[1])
                                                             for j, m in enumerate(cands)]:
        if m.shape != (im.height, im.width):
            raise ValueError(f'{what}: {m.shape[1]}×{m.shape[0]} mask for a {im.width}×{im.height} image.')
        if not m.any():
            raise ValueError(f'{what}: the mask is empty.')
    ids = assign_ids(K, np.random.default_rng(seed))
    order = sorted(range(K), key=lambda j: ids[j])
    turns = build_conversation(colour, K, 'A', question)[:1]
    input_ids = build_generation_prompt(turns, tokenizer, template, system=system, sample_id=sample_id)
    drawn = [draw_query(images[0], query, colour), draw_candidates(images[1], cands, ids, query_colour=colour)]
    E = expert_image_size
    item = {'id': sample_id,
            'input_ids': torch.tensor(input_ids, dtype=torch.long),
            'labels': torch.full((len(input_ids),), IGNORE_INDEX, dtype=torch.long),
            **process_image_inputs(drawn, image_processor, pad_image_to_square),
            'expert_pixel_values': torch.stack([_to_expert(im, E) for im in images]),
            'expert_masks': [torch.from_numpy(_mask_to_expert(query, E)[None]),
                             torch.from_numpy(np.stack([_mask_to_expert(cands[j], E) for j in order]))]}
    return item, options_for_ids(K), ids


class MMVMSFTDataset(SkipsBadSamples, Dataset):
    """MMVMData matching questions as CoLVA SFT items (module docstring for layout, drawing and text).

    Args:
        data_path: one MMVMData JSON file or a list of them (concatenated in order).
        tokenizer: a HF tokenizer holding ``<VPT_CONTEXT>`` (``load_tokenizer(path,
            extra_special_tokens=[VPT_TOKEN])``), or its config dict.
        template: chat template name (``mllm_align.data.templates``).
        image_processor: the base model's processor (or config dict), applied to the two DRAWN images.
        expert_image_size: E (the clean images and the masks resized to E×E for the vision expert).
        expert_grid: g, the expert's patch grid; an object that vanishes on it is a bad sample.
        image_root: folder the ``file_names`` are relative to (default: each JSON's folder).
        form: ``'auto'`` (reasoning when a record has a ``description``), ``'choice'`` or ``'reasoning'``.
        mask_threshold: τ of the grid test (``masks_to_grid``'s, :func:`~mllm_align.data.sa1b.objects_on_grid`; 0.5 in
            CoLVA SFT).
        max_length: longest effective length (text + image tokens); longer is a bad sample (``too_long``).
        num_image_tokens: tokens per image of a fixed-size processor (patch grids: their own count).
        pad_image_to_square: LLaVA-1.5's pad before a fixed-size processor (False for Qwen2-VL).
        query_colours: names from ``NAMED_COLOURS`` the query colour is drawn from (default: all of them).
        seed: item ``i`` draws from ``default_rng((seed, i))``.
        on_bad_sample: ``'raise'`` or ``'skip'`` (counted per cause; the next record's item is returned).
        system: system prompt (default: the template's).
        max_image_pixels: the image-size guard of ``load_image``.

    Item (K candidates)::

        {'id': str, 'input_ids': LongTensor [T] (2 IMAGE_TOKEN_INDEX, 1 + K VPT ids: query then candidates in ID
         order), 'labels': LongTensor [T] (IGNORE_INDEX outside the replies),
         'pixel_values' (+ 'image_grid_thw' [2, 3]): the two drawn images through the processor,
         'expert_pixel_values': FloatTensor [2, 3, E, E] in [0, 1] (clean images),
         'expert_masks': [BoolTensor [1, E, E] (query), BoolTensor [K, E, E] (candidates in ID order)]}

    Raises:
        FileNotFoundError / ValueError: a missing or unparsable data file, bad arguments, a tokenizer without
        ``<VPT_CONTEXT>``. In ``'raise'`` mode, :class:`BadSampleError` naming file, item, id, cause and fix.
    """

    def __init__(self, data_path: str | os.PathLike | Sequence[str | os.PathLike], tokenizer: Any, template: str,
                 image_processor: Any, expert_image_size: int, expert_grid: int,
                 image_root: str | os.PathLike | None = None,
                 form: Literal['auto', 'choice', 'reasoning'] = 'auto', mask_threshold: float = 0.5,
                 max_length: int = 4096, num_image_tokens: int = 576, pad_image_to_square: bool = True,
                 query_colours: Sequence[str] | None = None, seed: int = 0,
                 on_bad_sample: Literal['raise', 'skip'] = 'raise', system: str | None = None,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        if form not in ('auto', 'choice', 'reasoning'):
            raise ValueError(f"form must be 'auto', 'choice' or 'reasoning', got {form!r}.")
        if expert_image_size < 1 or expert_grid < 1 or max_length < 1 or num_image_tokens < 1:
            raise ValueError('expert_image_size, expert_grid, max_length and num_image_tokens must be positive.')
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f'mask_threshold={mask_threshold}: use a value in (0, 1) (0.5 in CoLVA SFT).')
        colours = tuple(query_colours) if query_colours is not None else tuple(NAMED_COLOURS)
        unknown = [c for c in colours if c not in NAMED_COLOURS]
        if unknown or not colours:
            raise ValueError(f'query_colours {unknown or colours!r}: choose names from {sorted(NAMED_COLOURS)}.')
        self.query_colours = colours
        self.template = get_template(template)
        self.tokenizer = build_from_cfg(tokenizer)
        vocab = self.tokenizer.get_vocab()
        if VPT_TOKEN not in vocab:
            raise ValueError(f'The tokenizer has no {VPT_TOKEN!r} token: load it with mllm_align.models.builders.'
                             f'load_tokenizer(path, extra_special_tokens=[{VPT_TOKEN!r}]) (the model does the same).')
        self.vpt_token_id = int(vocab[VPT_TOKEN])
        self.image_processor = build_from_cfg(image_processor)
        self.expert_image_size = int(expert_image_size)
        self.expert_grid = int(expert_grid)
        self.form = form
        self.mask_threshold = float(mask_threshold)
        self.max_length = int(max_length)
        self.num_image_tokens = int(num_image_tokens)
        self.pad_image_to_square = pad_image_to_square
        self.seed = int(seed)
        self._init_bad_samples(on_bad_sample)
        self.system = system
        self.max_image_pixels = max_image_pixels
        paths = [data_path] if isinstance(data_path, (str, os.PathLike)) else list(data_path)
        if not paths:
            raise ValueError('data_path is empty; give an MMVMData JSON file or a list of them.')
        self.records: list[tuple[Any, str, Path, int]] = []  # (raw, where, image_root, item)
        for p in map(Path, paths):
            root = Path(image_root) if image_root is not None else p.parent
            self.records += [(raw, f'{p}, item {k}', root, k) for k, raw in enumerate(_read_json_list(p))]
        self.data_files = [str(p) for p in paths]
        cands = np.array([self._count_candidates(r[0]) for r in self.records], dtype=np.int64)
        self.lengths = 150 + 12 * cands + 2 * self.num_image_tokens  # rough effective length, without tokenizing
        self.modality_lengths = self.lengths.copy()  # positive: every sample has images

    @staticmethod
    def _count_candidates(raw: Any) -> int:
        try:
            return len(raw['pos_annotations'][1]) + len(raw.get('neg_annotations', [[], []])[1])
        except (KeyError, IndexError, TypeError):
            return 0

    def __len__(self) -> int:
        return len(self.records)

    @property
    def metainfo(self) -> dict:
        """What mmengine's loops log about the dataset."""
        return dict(data_files=self.data_files, num_samples=len(self), template=self.template.name,
                    form=self.form, expert_image_size=self.expert_image_size, expert_grid=self.expert_grid)

    def record(self, index: int) -> MMVMSFTRecord:
        """The parsed record of sample ``index`` (:func:`parse_record`)."""
        raw, where, root, k = self.records[index]
        return parse_record(raw, where, root, k)

    def _bad_sample_source(self) -> str:
        return str(self.data_files)

    def _read(self, path: Path, where: str) -> Image.Image:
        if not path.is_file():
            raise _bad('missing_image', where, f'image {path} does not exist', error=MissingImageError)
        try:
            return load_image(path, self.max_image_pixels)
        except ImageTooLargeError as err:
            raise _bad('image_too_large', where, str(err)) from None
        except UnreadableImageError as err:
            raise _bad('unreadable_image', where, str(err)) from None

    def _load(self, index: int) -> dict[str, Any]:
        try:
            return self._build(index)
        except BadSampleError as err:
            if self.on_bad_sample == 'raise':  # say how to skip such samples
                raise type(err)(f'{err}{_SKIP_HINT}', err.cause) from None
            raise

    def _build(self, index: int) -> dict[str, Any]:
        rec = self.record(index)
        form = self.form if self.form != 'auto' else ('reasoning' if rec.description else 'choice')
        if form == 'reasoning' and not rec.description:
            raise _bad('no_description', rec.where, 'the record has no description')
        clean = [self._read(p, rec.where) for p in rec.images]
        query, cands = record_masks(rec, [im.size for im in clean])
        K, E = len(cands), self.expert_image_size
        rng = np.random.default_rng((self.seed, index))
        colour = self.query_colours[int(rng.integers(len(self.query_colours)))]
        ids = assign_ids(K, rng)  # ids[j]: the tag of candidate j
        question = int(rng.integers(len(QUESTIONS)))
        prefix = int(rng.integers(len(REASONING_PREFIXES)))
        order = sorted(range(K), key=lambda j: ids[j])  # the text's order: by ID
        q_expert = _mask_to_expert(query, E)[None]  # (1, E, E)
        c_expert = np.stack([_mask_to_expert(cands[j], E) for j in order])  # (K, E, E)
        vanished = [] if q_expert.any() else ['the query']
        vanished += [f'candidate ID {ids[j]}' for j, m in zip(order, c_expert) if not m.any()]
        if not vanished:
            for what, masks in (('the query', q_expert), ('candidate', c_expert)):
                valid = objects_on_grid(torch.from_numpy(masks), self.expert_grid, self.mask_threshold)
                vanished += [what if what == 'the query' else f'candidate ID {k + 1}'
                             for k in np.flatnonzero(~valid.numpy())]
        if vanished:
            raise _bad('object_vanishes_on_grid', rec.where,
                       f'{", ".join(vanished)} cover(s) no cell of the {self.expert_grid}×{self.expert_grid} expert '
                       f'grid at {E}×{E} (mask_threshold={self.mask_threshold})')
        letters = list(options_for_ids(K))
        answer = letters[ids[rec.answer] - 1] if rec.answer is not None else letters[K]
        turns = build_conversation(colour, K, answer, question,
                                   rec.description if form == 'reasoning' else None, prefix)
        try:
            input_ids, labels = encode_conversation(turns, self.tokenizer, self.template, system=self.system,
                                                    sample_id=rec.id)
        except ConversationError as err:  # pragma: no cover - the turns are built here
            raise _bad('malformed_record', rec.where, str(err)) from None
        n_vpt = sum(t == self.vpt_token_id for t in input_ids)
        if n_vpt != K + 1:
            raise ValueError(f'{rec.where}: {n_vpt} {VPT_TOKEN} ids in the encoded text for {K + 1} objects: the '
                             f'tokenizer splits or merges {VPT_TOKEN}; add it as a special token (load_tokenizer(…, '
                             f'extra_special_tokens=[{VPT_TOKEN!r}])).')
        drawn = [draw_query(clean[0], query, colour), draw_candidates(clean[1], cands, ids, query_colour=colour)]
        image_inputs = process_image_inputs(drawn, self.image_processor, self.pad_image_to_square)
        if has_patch_grid(self.image_processor):
            merge = int(getattr(self.image_processor, 'merge_size', 1))
            image_tokens = int((image_inputs['image_grid_thw'].prod(-1) // merge ** 2).sum())
        else:
            image_tokens = 2 * self.num_image_tokens
        length = len(input_ids) - 2 + image_tokens
        if length > self.max_length:
            raise _bad('too_long', rec.where, f'{length} tokens (images included), more than '
                                              f'max_length={self.max_length}')
        return {'id': rec.id,
                'input_ids': torch.tensor(input_ids, dtype=torch.long),
                'labels': torch.tensor(labels, dtype=torch.long),
                **image_inputs,
                'expert_pixel_values': torch.stack([_to_expert(im, E) for im in clean]),  # (2, 3, E, E)
                'expert_masks': [torch.from_numpy(q_expert), torch.from_numpy(c_expert)]}
