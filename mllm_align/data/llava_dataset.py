"""LLaVA JSON / JSONL dataset: lazy, with exact label masks and explicit errors for bad samples.

Data format (``shared/DESIGN.md``)::

    [{"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                        {"from": "gpt", "value": "The bus is white and red."}, ...]}, ...]

``image`` may be a list (multi-image samples) or absent (text-only); there must be one ``<image>``
in the human turns per image. Start-up builds a byte-offset index only (see ``json_index``): no
record is parsed or tokenized until it is read, so LLaVA-665k is ready in seconds. Lengths for
the length-grouped sampler are estimated from byte spans (``chars_per_token`` bytes per token)
plus ``num_image_tokens`` per image.

Each item is ``{'input_ids': LongTensor [L], 'labels': LongTensor [L], 'pixel_values':
FloatTensor [N_img, 3, H, W] or None, 'id': str}``; each image is ONE ``IMAGE_TOKEN_INDEX`` in
``input_ids`` that the model replaces by ``num_image_tokens`` features.

Length rule: effective length = text tokens + ``num_image_tokens`` per image. A longer sample is
truncated from the end, never through an image; a sample whose images (with the text before them)
do not fit, or that keeps no supervised token, is bad. Bad samples (malformed record, missing or
unreadable image, ``<image>``/image count mismatch, empty conversation, unknown speaker, too long)
raise an error naming the file, line/item, sample id, cause and fix; with
``on_bad_sample='skip'`` they are counted per cause, logged once per cause, and the next item is
returned instead.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any, Literal, Sequence

import numpy as np
import torch
from mmengine.logging import print_log
from PIL import Image, UnidentifiedImageError
from torch.utils.data import ConcatDataset as TorchConcatDataset
from torch.utils.data import Dataset

from ..constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .image_processing import process_images
from .json_index import JsonRecords, MalformedRecordError
from .templates import ConversationError, encode_conversation, get_template

__all__ = ['LLaVADataset', 'ConcatDataset', 'BadSampleError', 'MissingImageError',
           'BAD_SAMPLE_CAUSES', 'build_from_cfg']

BAD_SAMPLE_CAUSES: dict[str, str] = {
    'malformed_json': 'fix the record or remove it from the data file',
    'missing_image': 'check `image_folder` and the `image` field, or remove the sample',
    'unreadable_image': 'replace the image file or remove the sample',
    'image_token_without_image': 'add an `image` field or remove `<image>` from the text',
    'image_without_image_token': "put one `<image>` in the human turn per image "
                                 '(or set insert_missing_image_token=True)',
    'image_count_mismatch': 'make the number of `<image>` placeholders equal the number of images',
    'empty_conversation': 'give the sample at least one human and one gpt turn',
    'unknown_speaker': "use 'human'/'gpt' (or 'user'/'assistant', 'system') in `from`",
    'bad_turn': 'each turn needs `from` and a string `value`; a system turn only comes first',
    'image_token_in_reply': 'move `<image>` to a human turn',
    'too_long': 'raise max_length, shorten the sample, or remove it',
    'no_supervised_tokens': 'the sample needs a gpt turn with text',
}
_SKIP_HINT = "Set on_bad_sample='skip' to skip such samples (they are counted and logged)."


class BadSampleError(ValueError):
    """A sample that cannot be used; ``cause`` is a key of :data:`BAD_SAMPLE_CAUSES`."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class MissingImageError(BadSampleError, FileNotFoundError):
    """A sample's image file does not exist (also a ``FileNotFoundError``)."""


def build_from_cfg(cfg: Any) -> Any:
    """Build an mmengine-style ``dict(type=callable, **kwargs)``; anything else is returned as is.

    ``type`` must be a callable (e.g. ``AutoTokenizer.from_pretrained``), as pure-Python mmengine
    configs pass it; lazy config objects are resolved first.

    Raises:
        TypeError: ``type`` is a string or not callable.
    """
    if not isinstance(cfg, dict) or 'type' not in cfg:
        return cfg
    kwargs = {k: cfg[k] for k in cfg}  # ConfigDict.__getitem__ resolves lazy objects
    obj_type = kwargs.pop('type')
    if hasattr(obj_type, 'build') and type(obj_type).__name__ in ('LazyObject', 'LazyAttr'):
        obj_type = obj_type.build()
    if isinstance(obj_type, str) or not callable(obj_type):
        raise TypeError(f'Cannot build {obj_type!r}: pass the callable itself as `type`, '
                        'e.g. dict(type=AutoTokenizer.from_pretrained, '
                        'pretrained_model_name_or_path=...).')
    return obj_type(**kwargs)


class LLaVADataset(Dataset):
    """Lazy LLaVA JSON / JSONL dataset (see the module docstring).

    Args:
        data_path: one file or a list of files (JSON arrays or JSONL; concatenated in order).
        image_folder: directory the ``image`` paths are relative to (None: paths as written).
        tokenizer: a HF tokenizer, or ``dict(type=AutoTokenizer.from_pretrained, ...)``.
        template: chat template name (``plain``, ``vicuna_v1``, ``llama3``, ``qwen2``, ``phi3``).
        image_processor: a HF image processor or its config dict.
        max_length: maximum effective length (text tokens + image tokens).
        num_image_tokens: features each image becomes in the model (576 for CLIP-L/14-336).
        pad_image_to_square: LLaVA-1.5's pad-to-square before the processor.
        on_bad_sample: ``'raise'`` or ``'skip'`` (count, log once per cause, return the next item).
        system: system prompt for conversations without a system turn (default: the template's).
        insert_missing_image_token: for samples with images but no ``<image>`` at all, put the
            placeholders at the start of the first human turn instead of failing.
        chars_per_token: bytes of JSON per token in the length estimate.

    Attributes:
        lengths: int64 ``[N]`` estimated effective lengths (no tokenization).
        modality_lengths: int64 ``[N]``: +length for samples with images, -length for text-only
            (LLaVA's convention, used by :class:`LengthGroupedSampler`).
        num_skipped: bad samples skipped so far (in this process); ``skip_counts`` per cause.

    Raises:
        FileNotFoundError: a data file or ``image_folder`` does not exist.
        ValueError: unknown template / ``on_bad_sample``, no samples, or a broken JSON array.
    """

    def __init__(self, data_path: str | os.PathLike | Sequence[str | os.PathLike],
                 image_folder: str | os.PathLike | None, tokenizer: Any, template: str,
                 image_processor: Any = None, max_length: int = 2048, num_image_tokens: int = 576,
                 pad_image_to_square: bool = True,
                 on_bad_sample: Literal['raise', 'skip'] = 'raise', system: str | None = None,
                 insert_missing_image_token: bool = False, chars_per_token: float = 4.0) -> None:
        if on_bad_sample not in ('raise', 'skip'):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}.")
        if max_length < 1 or num_image_tokens < 1:
            raise ValueError(f'max_length ({max_length}) and num_image_tokens ({num_image_tokens}) '
                             'must be positive.')
        self.template = get_template(template)
        if tokenizer is None:
            raise ValueError('LLaVADataset needs a tokenizer (a HF tokenizer or its config dict).')
        self.tokenizer = build_from_cfg(tokenizer)
        self.image_processor = build_from_cfg(image_processor)
        self.image_folder = None if image_folder is None else os.fspath(image_folder)
        if self.image_folder is not None and not os.path.isdir(self.image_folder):
            raise FileNotFoundError(f'image_folder {self.image_folder!r} is not a directory; '
                                    'check the `image_folder` setting.')
        self.max_length = int(max_length)
        self.num_image_tokens = int(num_image_tokens)
        self.pad_image_to_square = pad_image_to_square
        self.on_bad_sample = on_bad_sample
        self.system = system
        self.insert_missing_image_token = insert_missing_image_token

        paths = [data_path] if isinstance(data_path, (str, os.PathLike)) else list(data_path)
        if not paths:
            raise ValueError('data_path is empty; give a LLaVA JSON/JSONL file or a list of them.')
        self.files = [JsonRecords(p) for p in paths]
        sizes = np.array([len(f) for f in self.files], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])
        if self._offsets[-1] == 0:
            raise ValueError(f'No samples in {[f.path for f in self.files]}.')

        byte_lengths = np.concatenate([f.byte_lengths for f in self.files])
        image_counts = np.concatenate([f.image_counts for f in self.files])
        text = np.ceil(byte_lengths / chars_per_token).astype(np.int64)
        self.lengths = np.maximum(text + image_counts * self.num_image_tokens, 1)
        self.modality_lengths = np.where(image_counts > 0, self.lengths, -self.lengths)
        self.skip_counts: Counter[str] = Counter()
        self._warned: set[str] = set()

    # -------------------------------------------------------------- bookkeeping
    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_skipped(self) -> int:
        """Bad samples skipped so far in this process (each DataLoader worker counts its own)."""
        return sum(self.skip_counts.values())

    @property
    def metainfo(self) -> dict:
        """What mmengine's loops log about the dataset."""
        return dict(data_files=[f.path for f in self.files], num_samples=len(self),
                    template=self.template.name, max_length=self.max_length)

    def _locate(self, index: int) -> tuple[JsonRecords, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f'index {index} out of range for a dataset of {len(self)} samples.')
        index %= len(self)
        k = int(np.searchsorted(self._offsets, index, side='right')) - 1
        return self.files[k], index - int(self._offsets[k])

    def get_record(self, index: int) -> Any:
        """The parsed JSON record of sample ``index`` (no checks, no tokenization)."""
        records, local = self._locate(index)
        return records.load(local)

    # -------------------------------------------------------------- items
    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.on_bad_sample == 'raise':
            return self._load(index)
        n = len(self)
        skipped: Counter[str] = Counter()
        for attempt in range(n):
            j = (index + attempt) % n
            try:
                item = self._load(j)
            except BadSampleError as err:
                self._record_skip(err)
                skipped[err.cause] += 1
                continue
            if skipped:
                # Travels with the batch (llava_collate_fn sums it), so skips made inside DataLoader
                # workers still reach DatasetInfoHook in the main process.
                item['skipped'] = dict(skipped)
            return item
        raise RuntimeError(f'Every one of the {n} samples is bad (causes: {dict(self.skip_counts)}); '
                           'nothing to train on.')

    def _record_skip(self, err: BadSampleError) -> None:
        self.skip_counts[err.cause] += 1
        if err.cause not in self._warned:
            self._warned.add(err.cause)
            print_log(f'Skipping bad sample ({err.cause}); further samples with this cause are '
                      f'skipped silently and counted in `num_skipped`. {err}',
                      logger='current', level=logging.WARNING)

    def _load(self, index: int) -> dict[str, Any]:
        records, local = self._locate(index)

        def where() -> str:  # only on errors: a JSON array's line number costs a scan
            return f'{records.path}, {records.location(local)}'

        try:
            record = records.load(local)
        except MalformedRecordError as err:
            raise BadSampleError(f'{err} {_SKIP_HINT}', 'malformed_json') from None
        if not isinstance(record, dict):
            raise BadSampleError(f'{where()}: expected a JSON object (a sample), found '
                                 f'{type(record).__name__}. Fix or remove this record. {_SKIP_HINT}',
                                 'malformed_json')
        sample_id = str(record.get('id', f'#{index}'))

        def bad(cause: str, what: str, error: type[BadSampleError] = BadSampleError) -> BadSampleError:
            return error(f'{where()}, sample id {sample_id!r}: {what}; '
                         f'{BAD_SAMPLE_CAUSES[cause]}. {_SKIP_HINT}', cause)

        conversations = record.get('conversations')
        if not isinstance(conversations, list) or len(conversations) == 0:
            raise bad('empty_conversation', 'no conversation (`conversations` is missing or empty)')
        image_field = record.get('image')
        images = [] if image_field in (None, '', []) else (
            list(image_field) if isinstance(image_field, list) else [image_field])
        if any(not isinstance(p, str) for p in images):
            raise bad('malformed_json', f'the `image` field must be a path or a list of paths, '
                                        f'found {image_field!r}')
        num_tokens = sum(t.get('value', '').count(DEFAULT_IMAGE_TOKEN) for t in conversations
                         if isinstance(t, dict) and isinstance(t.get('value'), str))
        if images and num_tokens == 0 and self.insert_missing_image_token:
            conversations = _insert_image_tokens(conversations, len(images))
            num_tokens = len(images)
        if num_tokens and not images:
            raise bad('image_token_without_image',
                      f'the text has {num_tokens} {DEFAULT_IMAGE_TOKEN} but the sample has no `image` field')
        if images and num_tokens == 0:
            raise bad('image_without_image_token',
                      f'the sample has {len(images)} image(s) but no {DEFAULT_IMAGE_TOKEN} in its text')
        if num_tokens != len(images):
            raise bad('image_count_mismatch',
                      f'{num_tokens} {DEFAULT_IMAGE_TOKEN} in the text but {len(images)} image(s)')

        try:
            input_ids, labels = encode_conversation(conversations, self.tokenizer, self.template,
                                                    system=self.system, sample_id=sample_id)
        except ConversationError as err:
            raise bad(err.cause, str(err)) from None
        input_ids, labels = self._truncate(input_ids, labels, bad)

        pixel_values = None
        if images:
            pil_images = [self._read_image(p, bad) for p in images]
            pixel_values = process_images(pil_images, self.image_processor, self.pad_image_to_square)
        return {'input_ids': torch.tensor(input_ids, dtype=torch.long),
                'labels': torch.tensor(labels, dtype=torch.long),
                'pixel_values': pixel_values,
                'id': sample_id}

    def _truncate(self, input_ids: list[int], labels: list[int], bad) -> tuple[list[int], list[int]]:
        """Apply the length rule (see the module docstring)."""
        image_pos = [i for i, t in enumerate(input_ids) if t == IMAGE_TOKEN_INDEX]
        extra = (self.num_image_tokens - 1) * len(image_pos)  # each placeholder expands
        if len(input_ids) + extra > self.max_length:
            keep = self.max_length - extra  # ids kept, all images among them
            if image_pos and keep <= image_pos[-1]:
                need = image_pos[-1] + 1 + extra
                raise bad('too_long', f'its {len(image_pos)} image(s) and the text before them need '
                                      f'{need} tokens, more than max_length={self.max_length}')
            input_ids, labels = input_ids[:keep], labels[:keep]
            if all(label == IGNORE_INDEX for label in labels):
                raise bad('too_long', f'after truncation to max_length={self.max_length} no '
                                      'supervised (gpt) token is left')
        elif all(label == IGNORE_INDEX for label in labels):
            raise bad('no_supervised_tokens', 'no gpt turn with text to learn from')
        return input_ids, labels

    def _read_image(self, rel_path: str, bad) -> Image.Image:
        path = rel_path if self.image_folder is None else os.path.join(self.image_folder, rel_path)
        if not os.path.isfile(path):
            raise bad('missing_image', f'image {rel_path!r} not found at {path!r}', MissingImageError)
        if self.image_processor is None:
            raise ValueError('LLaVADataset has images to process but no image_processor; '
                             'pass `image_processor=`.')
        try:
            with Image.open(path) as image:
                image.load()
                return image.convert('RGB')
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise bad('unreadable_image', f'image {path!r} cannot be read ({err})') from None


def _insert_image_tokens(conversations: list, num_images: int) -> list:
    """Copy of ``conversations`` with ``<image>\\n`` × N at the start of the first human turn."""
    out = [dict(t) if isinstance(t, dict) else t for t in conversations]
    for turn in out:
        if isinstance(turn, dict) and str(turn.get('from', turn.get('role', ''))).lower() in ('human', 'user'):
            turn['value'] = (DEFAULT_IMAGE_TOKEN + '\n') * num_images + turn.get('value', '')
            break
    return out


class ConcatDataset(TorchConcatDataset):
    """``torch.utils.data.ConcatDataset`` that keeps ``lengths`` and ``modality_lengths``.

    Args:
        datasets: datasets (or their config dicts) with ``lengths``/``modality_lengths``.
    """

    def __init__(self, datasets: Sequence[Any]) -> None:
        built = [build_from_cfg(d) for d in datasets]
        for d in built:
            if not hasattr(d, 'modality_lengths'):
                raise TypeError(f'{type(d).__name__} has no `modality_lengths`; ConcatDataset '
                                'needs it for the length-grouped sampler.')
        super().__init__(built)
        self.lengths = np.concatenate([np.asarray(d.lengths) for d in built])
        self.modality_lengths = np.concatenate([np.asarray(d.modality_lengths) for d in built])

    @property
    def num_skipped(self) -> int:
        """Bad samples skipped so far, over all parts."""
        return sum(getattr(d, 'num_skipped', 0) for d in self.datasets)

    @property
    def metainfo(self) -> dict:
        """The parts' metainfo."""
        return dict(parts=[getattr(d, 'metainfo', {}) for d in self.datasets],
                    num_samples=len(self))
