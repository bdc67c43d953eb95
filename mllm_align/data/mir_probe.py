"""The MIR probe: N image–text pairs, drawn deterministically, and how each becomes a prompt.

Modality Integration Rate (Huang et al., https://arxiv.org/abs/2410.07167) compares the LLM hidden
states of vision tokens with those of *unrelated* text. The reference code
(shikiw/Modality-Integration-Rate at 0cebdad, ``mir.py``) does this:

* images: the first 100 TextVQA val questions' images; texts: ``os.listdir`` of the CNN/DailyMail
  ``stories/`` folder (filesystem order, so not reproducible), each story cut at its first
  ``@highlight``; image i is paired with text i;
* the prompt is a ``vicuna_v1`` conversation whose human turn is the bare image
  (``'<image>\\n'``) and whose *assistant reply is the story*:
  ``{system} USER: <image>\\n ASSISTANT: {story}</s>``; no truncation;
* every position after the 576 image tokens counts as text (see ``mllm_align.models.hidden_states``).

Here:

* **Images** come from a folder (every file under it, sorted by relative path; dot-files are
  ignored; a file PIL cannot read is an error naming it, or is skipped with ``skip_bad_images``) or
  from a LLaVA JSON/JSONL (the distinct ``image`` paths of its samples, resolved against
  ``image_folder``, default: the JSON's folder).
* **Texts** come from a folder of ``.txt`` / ``.story`` files (sorted; other files are ignored;
  ``.story`` files are cut at the first ``@highlight`` as in the seed) or a JSONL file with one
  ``{"text": ...}`` object per line (errors name the line). Empty texts are errors.
* **Pairing** is deterministic: with ``seed`` (default 0) each list is put in the order of
  ``sha256(f'{seed}\\0{id}')`` (a seeded permutation that does not depend on the Python/numpy
  version and keeps an item's rank when unrelated files are added), with ``seed=None`` in sorted
  order; the k-th selected image is paired with the k-th selected text. Only selected items are
  read, so a 300k-story folder costs one directory listing.
* **Too few pairs**: if fewer than ``eval_num`` images or texts are available, a warning is logged
  and every available pair is used (the count is recorded in the results); zero pairs is an error.
* **Prompt** (:meth:`MIRProbe.encode`), ``placement='reply'`` (default, the seed's layout):
  ``[{'from': 'human', 'value': '<image>\\n'}, {'from': 'gpt', 'value': text}]`` through
  :func:`encode_conversation` in the model's own template. It also works with the ``plain``
  pre-training template (``{bos}<image>{text}{eos}``), which drops the text of human turns.
  ``placement='user'``: ``[{'from': 'human', 'value': '<image>\\n' + text}]`` through
  :func:`build_generation_prompt` (text in the user turn, then the open assistant header).
* **Truncation**: each text is cut to its first ``text_max_tokens`` tokens (default 1024, 0 = no
  cap) by the model's tokenizer, at a token boundary of the text itself. The seed feeds whole
  CNN/DM stories (~800 words, roughly 1k LLaMA tokens, some far longer) to LLaVA-1.5, whose
  training length is 2048 tokens of which 576 are image tokens; 1024 keeps every prompt within that
  length and bounds the per-sample cost, while leaving most stories whole.

Images are padded to a square with the processor mean before the HF image processor (LLaVA-1.5's
``pad`` mode, :func:`process_images`), as in training; the seed does the same through LLaVA's
``process_images``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from mmengine.logging import print_log
from PIL import Image

from ..constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .image_loading import load_image
from .image_processing import has_patch_grid, process_image_inputs, process_images
from .templates import build_generation_prompt, encode_conversation, get_template

__all__ = [
    'DEFAULT_TEXT_MAX_TOKENS', 'TEXT_SUFFIXES', 'EncodedPair', 'MIRProbe', 'Placement', 'ProbePair',
    'build_mir_probe', 'default_text_folder', 'list_image_candidates', 'list_text_candidates',
    'read_text', 'seeded_order', 'truncate_text',
]

DEFAULT_TEXT_MAX_TOKENS = 1024
TEXT_SUFFIXES = ('.txt', '.story')
Placement = Literal['reply', 'user']
PLACEMENTS: tuple[str, ...] = ('reply', 'user')


def default_text_folder() -> Path:
    """``data/mir_texts`` of the source checkout: 32 short self-written paragraphs (see its README)."""
    return Path(__file__).resolve().parents[2] / 'data' / 'mir_texts'


# ---------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Candidate:
    """An image or text not read yet: ``id`` names it in errors and results."""

    id: str
    path: Path
    line: int | None = None  # JSONL texts: 1-based line number


def _walk_files(folder: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``folder`` as (relative posix path, path), sorted; dot-entries skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        for name in filenames:
            if name.startswith('.'):
                continue
            path = Path(dirpath) / name
            out.append((path.relative_to(folder).as_posix(), path))
    return sorted(out)


def _load_llava_records(path: Path) -> list[Any]:
    if path.suffix.lower() == '.jsonl':
        records = []
        with open(path, encoding='utf-8') as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f'{path}:{lineno}: not valid JSON ({exc.msg}).') from exc
        return records
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f'{path}: not valid JSON ({exc.msg} at line {exc.lineno}); expected a LLaVA '
                         'list of samples.') from exc
    if not isinstance(data, list):
        raise ValueError(f'{path}: expected a LLaVA JSON list of samples, found a {type(data).__name__}.')
    return data


def list_image_candidates(images: str | os.PathLike, image_folder: str | os.PathLike | None = None
                          ) -> list[_Candidate]:
    """Sorted, de-duplicated image candidates of a folder or a LLaVA JSON/JSONL (not opened yet).

    Args:
        images: a folder (every file under it) or a LLaVA ``.json`` / ``.jsonl`` file (the ``image``
            fields of its samples; a list of images contributes each).
        image_folder: where the JSON's relative image paths live (default: the JSON's folder).

    Raises:
        FileNotFoundError: ``images`` does not exist.
        ValueError: an empty folder, a JSON without any ``image`` field, or a file that is neither.
    """
    src = Path(images)
    if src.is_dir():
        found = [_Candidate(rel, path) for rel, path in _walk_files(src)]
        if not found:
            raise ValueError(f'Image folder {str(src)!r} is empty: MIR needs images (give --images a folder '
                             'of images or a LLaVA JSON).')
        return found
    if not src.exists():
        raise FileNotFoundError(f'Image source {str(src)!r} does not exist (expected a folder of images or a '
                                'LLaVA .json/.jsonl file).')
    if src.suffix.lower() not in ('.json', '.jsonl'):
        raise ValueError(f'Image source {str(src)!r} is a file but not a LLaVA .json/.jsonl; give a folder of '
                         'images or a LLaVA JSON (with --image-folder for its relative paths).')
    root = Path(image_folder) if image_folder is not None else src.parent
    names: set[str] = set()
    for record in _load_llava_records(src):
        value = record.get('image') if isinstance(record, dict) else None
        for name in ([value] if isinstance(value, str) else value if isinstance(value, list) else []):
            if isinstance(name, str) and name:
                names.add(name)
    if not names:
        raise ValueError(f'{src}: no sample has an `image` field, so there are no images to probe with.')
    return [_Candidate(name, root / name) for name in sorted(names)]


def list_text_candidates(texts: str | os.PathLike) -> list[_Candidate]:
    """Sorted text candidates: ``.txt`` / ``.story`` files of a folder, or the non-blank lines of a JSONL.

    Raises:
        FileNotFoundError: ``texts`` does not exist.
        ValueError: no text file in the folder, an empty JSONL, or a file that is not ``.jsonl``.
    """
    src = Path(texts)
    if src.is_dir():
        found = [_Candidate(rel, path) for rel, path in _walk_files(src)
                 if path.suffix.lower() in TEXT_SUFFIXES]
        if not found:
            raise ValueError(f'Text folder {str(src)!r} has no {"/".join(TEXT_SUFFIXES)} files (other files '
                             'are ignored).')
        return found
    if not src.exists():
        raise FileNotFoundError(f'Text source {str(src)!r} does not exist (expected a folder of .txt/.story '
                                'files or a JSONL file with one {"text": ...} per line).')
    if src.suffix.lower() != '.jsonl':
        raise ValueError(f'Text source {str(src)!r}: expected a folder of .txt/.story files or a .jsonl file '
                         'with one {"text": ...} per line.')
    found = []
    with open(src, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                found.append(_Candidate(f'{src.name}:{lineno}', src, lineno))
    if not found:
        raise ValueError(f'Text file {str(src)!r} is empty: expected one {{"text": ...}} per line.')
    return found


def read_text(candidate: _Candidate) -> str:
    """The stripped text of a candidate (``.story``: the part before the first ``@highlight``).

    Raises:
        ValueError: an empty text, a JSONL line that is not an object with a string ``text``, or a
            text containing the image placeholder.
    """
    if candidate.line is not None:
        with open(candidate.path, encoding='utf-8') as f:
            for lineno, line in enumerate(f, 1):
                if lineno == candidate.line:
                    break
        where = f'{candidate.path}:{candidate.line}'
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f'{where}: not valid JSON ({exc.msg}).') from exc
        if not isinstance(record, dict) or not isinstance(record.get('text'), str):
            raise ValueError(f'{where}: expected an object with a string "text" field.')
        text = record['text']
    else:
        where = str(candidate.path)
        try:
            text = candidate.path.read_text(encoding='utf-8')
        except UnicodeDecodeError as exc:
            raise ValueError(f'Text file {where}: not UTF-8 ({exc.reason}).') from exc
        if candidate.path.suffix.lower() == '.story':
            text = text.split('@highlight')[0]  # the seed's read_story_file: the story, no highlights
    text = text.strip()
    if not text:
        raise ValueError(f'Text {where} is empty (after stripping whitespace); remove it or give another '
                         'text source.')
    if DEFAULT_IMAGE_TOKEN in text:
        raise ValueError(f'Text {where} contains the image placeholder {DEFAULT_IMAGE_TOKEN!r}; MIR prompts '
                         'need exactly one image each. Remove it from the text.')
    return text


def seeded_order(ids: Sequence[str], seed: int | None) -> list[int]:
    """Indices of ``ids`` in the order of ``sha256(f'{seed}\\0{id}')``; sorted-id order if ``seed`` is None."""
    if seed is None:
        return sorted(range(len(ids)), key=lambda i: ids[i])
    return sorted(range(len(ids)), key=lambda i: hashlib.sha256(f'{seed}\0{ids[i]}'.encode()).digest())


def _image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None."""
    if not path.is_file():
        return 'the file does not exist'
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        return f'PIL cannot read it as an image ({type(exc).__name__}: {exc})'
    return None


# ---------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbePair:
    """One image–text pair of the probe."""

    image_id: str
    image_path: Path
    text_id: str
    text: str


@dataclass
class EncodedPair:
    """One pair ready for a model.

    Attributes:
        input_ids: ``[T]`` prompt ids with one ``IMAGE_TOKEN_INDEX`` placeholder.
        text_mask: ``[T]`` bool, True at the text's own tokens (``placement='reply'``: the supervised
            reply tokens that are not special tokens, i.e. without the end-of-turn marker); None for
            ``placement='user'``.
        pixel_values: ``[1, 3, H, W]`` float32, or Qwen2-VL-style patches ``[S, C·T·p·p]``.
        num_text_tokens: tokens of the (possibly truncated) text on its own.
        truncated: whether the text was cut to ``text_max_tokens``.
        image_grid_thw: ``[1, 3]`` the patch grid for patch-grid processors (Qwen2-VL), else None.
    """

    input_ids: list[int]
    text_mask: list[bool] | None
    pixel_values: torch.Tensor
    num_text_tokens: int
    truncated: bool
    image_grid_thw: torch.Tensor | None = None


def truncate_text(text: str, tokenizer: Any, max_tokens: int | None) -> tuple[str, int, bool]:
    """``(text cut to its first max_tokens tokens, token count, truncated?)``; ``max_tokens`` 0/None: no cap.

    The cut is made in the string at the end of the last kept token (fast tokenizers' offsets), so
    the prompt is tokenized once, in context; slow tokenizers fall back to decoding the kept ids.
    """
    fast = bool(getattr(tokenizer, 'is_fast', False))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
    ids = enc['input_ids']
    if not max_tokens or len(ids) <= max_tokens:
        return text, len(ids), False
    if fast:
        cut = enc['offset_mapping'][max_tokens - 1][1]
        return text[:cut].rstrip(), max_tokens, True
    return tokenizer.decode(ids[:max_tokens]).strip(), max_tokens, True


@dataclass
class MIRProbe:
    """N image–text pairs plus how they become model inputs; images and prompts are built on demand.

    Build it with :func:`build_mir_probe`. The probe holds paths and texts only (no pixels), so its
    memory does not depend on the image size; :meth:`encode` loads and preprocesses one pair.

    Attributes:
        pairs: the pairs, in probe order.
        image_processor: the vision tower's HF image processor (needed by :meth:`encode`).
        placement: ``'reply'`` (text as the assistant reply; seed) or ``'user'`` (text in the user turn).
        text_max_tokens: per-text token cap (0/None: none).
        pad_to_square: LLaVA-1.5 ``pad`` preprocessing.
        system: system prompt for chat templates (default: the template's).
        requested: the ``eval_num`` asked for (``len(pairs)`` may be smaller).
        sources: where the pairs came from (for results metadata).
        skipped_images: ``(image id, reason)`` of unreadable images skipped with ``skip_bad_images``.
    """

    pairs: list[ProbePair]
    image_processor: Any = None
    placement: Placement = 'reply'
    text_max_tokens: int | None = DEFAULT_TEXT_MAX_TOKENS
    pad_to_square: bool = True
    system: str | None = None
    requested: int = 0
    sources: dict[str, Any] = field(default_factory=dict)
    skipped_images: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f'placement={self.placement!r}: use one of {PLACEMENTS}.')

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[ProbePair]:
        return iter(self.pairs)

    def fingerprint(self) -> str:
        """sha256 over the pairs (ids and texts) and the prompt settings: equal fingerprints, equal inputs."""
        h = hashlib.sha256()
        for p in self.pairs:
            h.update(f'{p.image_id}\0{p.text_id}\0{p.text}\0'.encode())
        h.update(json.dumps(self.settings(), sort_keys=True).encode())
        return h.hexdigest()

    def settings(self) -> dict[str, Any]:
        """The prompt-building settings (JSON-serialisable)."""
        return dict(placement=self.placement, text_max_tokens=self.text_max_tokens,
                    pad_to_square=self.pad_to_square, system=self.system)

    def encode(self, index: int, tokenizer: Any, template: Any) -> EncodedPair:
        """Prompt ids, text mask and pixels of pair ``index`` for a model's tokenizer and template.

        Raises:
            ValueError: no image processor or tokenizer; ``placement='user'`` with a template that
                drops user text (``plain``); a prompt without exactly one image placeholder.
        """
        pair = self.pairs[index]
        if self.image_processor is None:
            raise ValueError('MIRProbe has no image_processor: pass the vision tower\'s image processor to '
                             'build_mir_probe (or set probe.image_processor).')
        if tokenizer is None or template is None:
            raise ValueError('MIR prompts need the model\'s tokenizer and chat template (model.tokenizer / '
                             'model.template); set `tokenizer=` and `template=` in the model config.')
        tpl = get_template(template)
        text, num_tokens, truncated = truncate_text(pair.text, tokenizer, self.text_max_tokens)
        image_turn = {'from': 'human', 'value': DEFAULT_IMAGE_TOKEN + '\n'}
        if self.placement == 'reply':
            ids, labels = encode_conversation([image_turn, {'from': 'gpt', 'value': text}], tokenizer, tpl,
                                              system=self.system, sample_id=pair.text_id)
            special = set(getattr(tokenizer, 'all_special_ids', []) or [])
            text_mask: list[bool] | None = [lab != IGNORE_INDEX and tok not in special
                                            for tok, lab in zip(ids, labels)]
        else:
            if tpl.images_only_user:
                raise ValueError(f"placement='user' with template {tpl.name!r}: this template keeps only the "
                                 "image placeholders of user turns, so the text would be dropped. Use "
                                 "placement='reply' (the seed's layout).")
            ids = build_generation_prompt([{'from': 'human', 'value': image_turn['value'] + text}], tokenizer, tpl,
                                          system=self.system, sample_id=pair.text_id)
            text_mask = None
        num_images = sum(1 for t in ids if t == IMAGE_TOKEN_INDEX)
        if num_images != 1:
            raise ValueError(f'Pair {index} ({pair.image_id} + {pair.text_id}): the prompt has {num_images} image '
                             f'placeholders, expected 1 (template {tpl.name!r}).')
        image = load_image(pair.image_path)
        if has_patch_grid(self.image_processor):  # Qwen2-VL: patches + grid, any aspect ratio
            entries = process_image_inputs([image], self.image_processor, self.pad_to_square)
            return EncodedPair(ids, text_mask, entries['pixel_values'], num_tokens, truncated,
                               entries['image_grid_thw'])
        pixels = process_images([image], self.image_processor, self.pad_to_square)  # (1, 3, H, W)
        return EncodedPair(ids, text_mask, pixels, num_tokens, truncated)


def build_mir_probe(images: str | os.PathLike, texts: str | os.PathLike | None = None,
                    image_folder: str | os.PathLike | None = None, eval_num: int = 100,
                    seed: int | None = 0, skip_bad_images: bool = False, image_processor: Any = None,
                    placement: Placement = 'reply', text_max_tokens: int | None = DEFAULT_TEXT_MAX_TOKENS,
                    pad_to_square: bool = True, system: str | None = None) -> MIRProbe:
    """Draw ``eval_num`` image–text pairs deterministically (see the module docstring).

    Args:
        images: a folder of images or a LLaVA ``.json`` / ``.jsonl``.
        texts: a folder of ``.txt`` / ``.story`` files or a ``.jsonl`` of ``{"text": ...}``; default
            :func:`default_text_folder` (``data/mir_texts``).
        image_folder: root of the JSON's relative image paths (default: the JSON's folder).
        eval_num: N, the number of pairs (the seed uses 100; MIR is stable for N >= 20).
        seed: permutation seed; None keeps sorted order.
        skip_bad_images: skip (with a warning) files PIL cannot read instead of raising.
        image_processor, placement, text_max_tokens, pad_to_square, system: see :class:`MIRProbe`.

    Returns:
        The probe, with ``min(eval_num, available)`` pairs (a warning when fewer than asked).

    Raises:
        ValueError: ``eval_num`` < 1; an unreadable image (without ``skip_bad_images``), naming it;
            empty sources; an empty text, naming its file or line; no usable image at all.
        FileNotFoundError: a missing source.
    """
    if not isinstance(eval_num, int) or eval_num < 1:
        raise ValueError(f'eval_num must be a positive integer, got {eval_num!r}.')
    if placement not in PLACEMENTS:
        raise ValueError(f'placement={placement!r}: use one of {PLACEMENTS}.')
    if text_max_tokens is not None and text_max_tokens < 0:
        raise ValueError(f'text_max_tokens must be >= 0 (0 = no cap), got {text_max_tokens}.')
    texts = default_text_folder() if texts is None else texts
    image_cands = list_image_candidates(images, image_folder)
    text_cands = list_text_candidates(texts)

    chosen_images: list[_Candidate] = []
    skipped: list[tuple[str, str]] = []
    for i in seeded_order([c.id for c in image_cands], seed):
        if len(chosen_images) == eval_num:
            break
        cand = image_cands[i]
        problem = _image_problem(cand.path)
        if problem is None:
            chosen_images.append(cand)
        elif skip_bad_images:
            skipped.append((cand.id, problem))
        else:
            raise ValueError(f'Image {str(cand.path)!r} cannot be used: {problem}. Remove it from the image '
                             'source, or pass --skip-bad-images (skip_bad_images=True) to skip such files.')
    if skipped:
        print_log(f'MIR probe: skipped {len(skipped)} unreadable image(s), e.g. {skipped[0][0]} '
                  f'({skipped[0][1]}).', logger='current', level=logging.WARNING)
    if not chosen_images:
        raise ValueError(f'No readable image in {str(images)!r} ({len(skipped)} skipped).')

    text_order = seeded_order([c.id for c in text_cands], seed)
    num = min(eval_num, len(chosen_images), len(text_cands))
    if num < eval_num:
        print_log(f'MIR probe: eval_num={eval_num} but only {len(chosen_images)} usable images and '
                  f'{len(text_cands)} texts are available; using {num} pairs.', logger='current',
                  level=logging.WARNING)
    pairs = []
    for k in range(num):
        img, txt = chosen_images[k], text_cands[text_order[k]]
        pairs.append(ProbePair(img.id, img.path, txt.id, read_text(txt)))
    sources = dict(images=str(images), image_folder=None if image_folder is None else str(image_folder),
                   texts=str(texts), seed=seed, eval_num=eval_num, num_pairs=num)
    return MIRProbe(pairs, image_processor=image_processor, placement=placement, text_max_tokens=text_max_tokens,
                    pad_to_square=pad_to_square, system=system, requested=eval_num, sources=sources,
                    skipped_images=skipped)
