"""LLaVA JSON / JSONL dataset: lazy, with exact label masks and explicit errors for bad samples.

Data format (``docs/design.md``, "Data formats")::

    [{"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                        {"from": "gpt", "value": "The bus is white and red."}, ...]}, ...]

``image`` may be a list (multi-image samples) or absent (text-only); there must be one ``<image>``
in the human turns per image. Start-up builds a byte-offset index only (see ``json_index``): no
record is parsed or tokenized until it is read, so LLaVA-665k is ready in seconds. Lengths for
the length-grouped sampler are estimated from byte spans (``chars_per_token`` bytes per token)
plus ``num_image_tokens`` per image. A sample's parsed, checked and tokenised text is kept per process in
:class:`SampleTextCache` (bounded; each DataLoader worker has its own), so later epochs skip the parse and the
tokeniser; items are the same with and without it.

Each item is ``{'input_ids': LongTensor [L], 'labels': LongTensor [L], 'pixel_values':
FloatTensor [N_img, 3, H, W] or None, 'id': str}``; each image is ONE ``IMAGE_TOKEN_INDEX`` in
``input_ids`` that the model replaces by ``num_image_tokens`` features. With a patch-grid image
processor (Qwen2-VL's ``Qwen2VLImageProcessor``,
:func:`~mllm_align.data.image_processing.has_patch_grid`) ``pixel_values`` is ``[S_i, C·T·p·p]`` (the
sample's patches) and the item also holds ``image_grid_thw [N_img, 3]``; image k then becomes
``t·h·w / merge²`` tokens, its own count, which the length rule uses instead of ``num_image_tokens``
(the images are read before truncation to know it).

Length rule: effective length = text tokens + ``num_image_tokens`` per image. A longer sample is
truncated from the end, never through an image; a sample whose images (with the text before them)
do not fit, or that keeps no supervised token, is bad.

Images are read by :func:`~mllm_align.data.image_loading.load_image`: a file with more than
``max_image_pixels`` pixels (read from the header, before decoding) is a bad sample
(``image_too_large``); EXIF orientation is applied; 16-bit and float images are scaled to 8 bits
and transparent pixels composited over ``alpha_background`` (white by default), as that module
states.

What happens to each kind of doubtful sample (the cause names are the keys of
:data:`BAD_SAMPLE_CAUSES` and :data:`SAMPLE_NOTICES`):

* **Bad samples** raise :class:`BadSampleError` naming the file, line (JSONL) or item and line
  (JSON), the sample id, the cause and the fix; with ``on_bad_sample='skip'`` they are counted per
  cause, the first of each cause is logged with its location, and the next item is returned
  instead. Bad are: a malformed record, a missing, unreadable or too large image, an
  ``<image>``/image count mismatch, an empty conversation, an unknown speaker, a conversation
  whose first turn (after a system turn) is the assistant's (``starts_with_gpt``: LLaVA's own
  loader silently drops that turn; here it is reported, since the data is then not what its
  author meant), a gpt turn with no text (``empty_reply``: it would teach the model to answer
  with nothing), a sample too long for its images, and one whose every supervised token is cut
  away by truncation (``reply_truncated_away``: it would contribute no loss).
* **Notices** do not stop training and never drop a sample; they are counted and reported by
  :class:`~mllm_align.engine.hooks.DatasetInfoHook`: ``truncated`` (a sample cut to
  ``max_length`` that keeps some supervised tokens; normal in long-conversation mixes, but a
  large count means ``max_length`` is too small) travels with each item as
  ``item['notices'] = {'truncated': 1}``; ``duplicate_id`` (the same ``id`` in several records,
  over all files; common in public LLaVA mixes) is found at start-up from the byte index
  without parsing (:attr:`LLaVADataset.duplicate_ids`) and logged with examples.
"""
from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
from mmengine.logging import print_log
from PIL import Image
from torch.utils.data import ConcatDataset as TorchConcatDataset
from torch.utils.data import Dataset

from ..constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .bad_samples import BadSampleError, MissingImageError, SkipsBadSamples
from .image_loading import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLargeError, UnreadableImageError, load_image
from .image_processing import has_token_counts, image_token_counts, process_image_inputs, resolve_background
from .json_index import JsonRecords, MalformedRecordError
from .templates import ConversationError, encode_conversation, get_template, normalize_conversation

__all__ = ['LLaVADataset', 'SampleTextCache', 'ConcatDataset', 'BadSampleError', 'MissingImageError',
           'BAD_SAMPLE_CAUSES', 'SAMPLE_NOTICES', 'DuplicateIds', 'build_from_cfg']

BAD_SAMPLE_CAUSES: dict[str, str] = {
    'malformed_json': 'fix the record or remove it from the data file',
    'missing_image': 'check `image_folder` and the `image` field, or remove the sample',
    'unreadable_image': 'replace the image file or remove the sample',
    'image_too_large': 'or remove the sample (the limit guards against decompression bombs)',
    'image_token_without_image': 'add an `image` field or remove `<image>` from the text',
    'image_without_image_token': "put one `<image>` in the human turn per image "
                                 '(or set insert_missing_image_token=True)',
    'image_count_mismatch': 'make the number of `<image>` placeholders equal the number of images',
    'empty_conversation': 'give the sample at least one human and one gpt turn',
    'unknown_speaker': "use 'human'/'gpt' (or 'user'/'assistant', 'system') in `from`",
    'bad_turn': 'each turn needs `from` and a string `value`; a system turn only comes first',
    'image_token_in_reply': 'move `<image>` to a human turn',
    'starts_with_gpt': 'start the conversation with a human turn (remove the leading gpt turn, '
                       'or add the question it answers)',
    'empty_reply': 'give every gpt turn text, or remove the empty turn and the question before it',
    'too_long': 'raise max_length, shorten the sample, or remove it',
    'reply_truncated_away': 'raise max_length, shorten the text before the first reply, or remove '
                            'the sample',
    'no_supervised_tokens': 'the sample needs a gpt turn with text',
}
SAMPLE_NOTICES: dict[str, str] = {
    'truncated': 'samples cut to max_length (they keep some supervised tokens); raise max_length '
                 'if this is more than a few percent',
    'duplicate_id': 'records whose `id` another record already has (all are trained on); '
                    'give them unique ids if anything downstream keys on `id`',
}
_SKIP_HINT = "Set on_bad_sample='skip' to skip such samples (they are counted and logged)."


@dataclass(frozen=True)
class DuplicateIds:
    """Duplicate sample ids of a dataset, found at start-up.

    Attributes:
        num_records: records whose id an earlier record already has.
        num_ids: distinct ids that occur more than once.
        examples: up to 3 ``(id, [locations])`` with ``'file, line 12'``-style locations.
    """

    num_records: int = 0
    num_ids: int = 0
    examples: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def describe(self) -> str:
        """One line for the log (empty when there are none)."""
        if not self.num_records:
            return ''
        shown = '; '.join(f'{i!r} at {", ".join(where)}' for i, where in self.examples)
        return (f'{self.num_records:,} records repeat the `id` of an earlier record '
                f'({self.num_ids:,} ids occur more than once), e.g. {shown}. All of them are '
                f'trained on; {SAMPLE_NOTICES["duplicate_id"].split("; ")[1]}.')


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


#: A sample's checked, tokenised text: ``(id, image paths, int32 [2, L] = (input_ids, labels))``, before truncation.
_SampleText = tuple[str, tuple[str, ...], np.ndarray]


class SampleTextCache:
    """Each sample's checked, tokenised text (:data:`_SampleText`) by index, in this process, bounded in bytes.

    A hit skips the JSON parse, the conversation checks and the tokenisation of a sample read before (the text
    of an index never changes; a bad sample raises before it is stored, so it raises again). Entries are added
    until ``max_bytes`` is reached and then kept, none evicted: under a shuffled sampler every index is equally
    likely next, so keeping the first entries hits as often as LRU would, with no bookkeeping.

    Memory per sample, as counted against the bound: ``sys.getsizeof`` of the int32 ``[2, L]`` array (8 bytes
    per token + 112), of the id and of each image path (49 + length each for ASCII), plus 200 bytes for the
    tuples, the dict slot and the int key: ≈ 8·L + 400 bytes, e.g. ≈ 0.8 KB for a LLaVA-558K caption (L ≈ 50),
    ≈ 5 KB for a LLaVA-665K conversation (L ≈ 600); the default 128 MiB holds ≈ 160k resp. ≈ 26k samples.

    With DataLoader workers each worker process has its own cache (a forked worker starts from a copy of the main
    process's), filled by the indices it is given; persistent workers keep it from one epoch to the next.
    Workers get whole batches round robin, so with W workers and a reshuffled order a worker re-meets in epoch
    e ≥ 2 about 1 − (1 − 1/W)^(e−1) of its samples: all of them for W = 1, a quarter in epoch 2 for W = 4.

    Args:
        max_bytes: the bound (0: cache nothing).

    Attributes:
        hits, misses: lookups so far; ``nbytes``: bytes held, counted as above.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.entries: dict[int, _SampleText] = {}
        self.nbytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, index: int) -> _SampleText | None:
        entry = self.entries.get(index)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, index: int, entry: _SampleText) -> None:
        sample_id, images, ids = entry
        size = sys.getsizeof(ids) + sys.getsizeof(sample_id) + sum(sys.getsizeof(p) for p in images) + 200
        if self.nbytes + size <= self.max_bytes and index not in self.entries:
            self.entries[index] = entry
            self.nbytes += size


class LLaVADataset(SkipsBadSamples, Dataset):
    """Lazy LLaVA JSON / JSONL dataset (see the module docstring).

    Args:
        data_path: one file or a list of files (JSON arrays or JSONL; concatenated in order).
        image_folder: directory the ``image`` paths are relative to (None: paths as written).
        tokenizer: a HF tokenizer, or ``dict(type=AutoTokenizer.from_pretrained, ...)``.
        template: chat template name (``plain``, ``vicuna_v1``, ``llama3``, ``qwen2``, ``qwen2_vl``, ``phi3``).
        image_processor: a HF image processor or its config dict (a Qwen2-VL one gives patches +
            ``image_grid_thw``; set ``pad_image_to_square=False`` with it).
        max_length: maximum effective length (text tokens + image tokens).
        num_image_tokens: features each image becomes in the model (576 for CLIP-L/14-336).
        pad_image_to_square: LLaVA-1.5's pad-to-square before the processor.
        on_bad_sample: ``'raise'`` or ``'skip'`` (count, log once per cause, return the next item).
        system: system prompt for conversations without a system turn (default: the template's).
        insert_missing_image_token: for samples with images but no ``<image>`` at all, put the
            placeholders at the start of the first human turn instead of failing.
        chars_per_token: bytes of JSON per token in the length estimate.
        max_image_pixels: largest ``width × height`` decoded, checked from the file header
            (default 89,478,485 ≈ 9459², Pillow's warning threshold; ``None``: no limit). Larger
            images are bad samples (``image_too_large``).
        alpha_background: what transparent pixels are composited over: ``'white'``, ``'mean'``
            (the image processor's mean colour, the same as the pad colour) or an RGB triple.
        exif_transpose: apply the EXIF orientation tag (LLaVA's loader does not; False
            reproduces it).
        text_cache_mib: bound of the per-process :class:`SampleTextCache` of tokenised samples, in MiB
            (0: tokenise on every read). Items are the same with and without it.

    Attributes:
        lengths: int64 ``[N]`` estimated effective lengths (no tokenization).
        modality_lengths: int64 ``[N]``: +length for samples with images, -length for text-only
            (LLaVA's convention, used by :class:`LengthGroupedSampler`).
        num_skipped: bad samples skipped so far (in this process); ``skip_counts`` per cause.
        notice_counts: :data:`SAMPLE_NOTICES` seen so far in this process (``truncated``).
        duplicate_ids: :class:`DuplicateIds` over all files, found at start-up.
        text_cache: the :class:`SampleTextCache` of this process.

    Raises:
        FileNotFoundError: a data file or ``image_folder`` does not exist.
        ValueError: unknown template / ``on_bad_sample``, no samples, or a broken JSON array.
    """

    def __init__(self, data_path: str | os.PathLike | Sequence[str | os.PathLike],
                 image_folder: str | os.PathLike | None, tokenizer: Any, template: str,
                 image_processor: Any = None, max_length: int = 2048, num_image_tokens: int = 576,
                 pad_image_to_square: bool = True,
                 on_bad_sample: Literal['raise', 'skip'] = 'raise', system: str | None = None,
                 insert_missing_image_token: bool = False, chars_per_token: float = 4.0,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 alpha_background: Literal['white', 'mean'] | tuple[int, int, int] = 'white',
                 exif_transpose: bool = True, text_cache_mib: float = 128) -> None:
        self._init_bad_samples(on_bad_sample)
        if not text_cache_mib >= 0:
            raise ValueError(f'text_cache_mib must be >= 0 (0: no cache), got {text_cache_mib!r}.')
        self.text_cache = SampleTextCache(int(text_cache_mib * 2 ** 20))
        if max_image_pixels is not None and (isinstance(max_image_pixels, bool)
                                             or not isinstance(max_image_pixels, int) or max_image_pixels < 1):
            raise ValueError(f'max_image_pixels must be a positive int or None (no limit), '
                             f'got {max_image_pixels!r}.')
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
        self.system = system
        self.insert_missing_image_token = insert_missing_image_token
        self.max_image_pixels = max_image_pixels
        self.alpha_background = resolve_background(alpha_background, self.image_processor)
        self.exif_transpose = exif_transpose

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
        self.notice_counts: Counter[str] = Counter()
        self.duplicate_ids = self._find_duplicate_ids()
        if self.duplicate_ids.num_records:
            print_log(f'LLaVADataset {self.data_files}: {self.duplicate_ids.describe()}',
                      logger='current', level=logging.WARNING)

    # -------------------------------------------------------------- bookkeeping
    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def data_files(self) -> list[str]:
        """The data files, in order."""
        return [f.path for f in self.files]

    def _find_duplicate_ids(self) -> DuplicateIds:
        """Duplicate ids over all files, from the id hashes of the byte index.

        Where ``"id"`` is each record's first key (LLaVA data) the index is exact and nothing is
        parsed but the examples shown. Otherwise the index took the first ``"id"`` key in the
        record's text, possibly a nested one, so when such a record's hash repeats, the records
        whose hashes repeat are parsed and grouped by their real id (a record whose nested id
        hides a duplicate top-level id is missed).
        """
        hashes = np.concatenate([f.id_hashes for f in self.files])
        has_id = np.concatenate([f.has_id for f in self.files])
        exact = np.concatenate([f.id_exact for f in self.files])
        index = np.flatnonzero(has_id)
        if len(index) < 2:
            return DuplicateIds()
        order = index[np.argsort(hashes[index], kind='stable')]  # equal ids: ascending index
        sorted_hashes = hashes[order]
        same = sorted_hashes[1:] == sorted_hashes[:-1]
        if not same.any():
            return DuplicateIds()
        repeated = np.zeros(len(order), dtype=bool)  # members of a group of equal hashes
        repeated[1:] |= same
        repeated[:-1] |= same
        members, keys = order[repeated], sorted_hashes[repeated]
        groups = np.split(members, np.flatnonzero(keys[1:] != keys[:-1]) + 1)
        if not exact[members].all():
            by_id: dict[str, list[int]] = {}
            for member in sorted(int(m) for m in members):
                record = self.get_record_or_none(member)
                value = record.get('id') if isinstance(record, dict) else None
                if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                    by_id.setdefault(str(value), []).append(member)
            groups = [np.asarray(g) for g in by_id.values() if len(g) > 1]
        if not groups:
            return DuplicateIds()
        groups.sort(key=lambda g: int(g[0]))  # earliest first
        examples = []
        for g in groups[:3]:
            record = self.get_record_or_none(int(g[0]))
            sample_id = str(record.get('id')) if isinstance(record, dict) else '?'
            where = []
            for m in g[:3]:
                records, local = self._locate(int(m))
                where.append(f'{records.path}, {records.location(local)}')
            examples.append((sample_id, tuple(where)))
        return DuplicateIds(num_records=sum(len(g) - 1 for g in groups), num_ids=len(groups),
                            examples=tuple(examples))

    def get_record_or_none(self, index: int) -> Any:
        """:meth:`get_record`, or None for a malformed record."""
        try:
            return self.get_record(index)
        except MalformedRecordError:
            return None

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
    def _bad_sample_source(self) -> str:
        return str(self.data_files)

    def _load(self, index: int) -> dict[str, Any]:
        records, local = self._locate(index)

        def where() -> str:  # only on errors: a JSON array's line number costs a scan
            return f'{records.path}, {records.location(local)}'

        text = self.text_cache.get(index)
        if text is None:
            text = self._encode_text(index, records, local, where)
            self.text_cache.put(index, text)
        sample_id, images, ids = text

        bad = self._bad_sample(where, sample_id)

        input_ids, labels = ids[0].tolist(), ids[1].tolist()
        num_ids = len(input_ids)
        image_inputs: dict[str, Any] = {'pixel_values': None}
        tokens_per_image = None
        if images and has_token_counts(self.image_processor):  # counts depend on each image (grid, tiles)
            image_inputs = self._process_images(list(images), bad)
            tokens_per_image = image_token_counts(self.image_processor, image_inputs)
        input_ids, labels = self._truncate(input_ids, labels, bad, tokens_per_image)
        if images and tokens_per_image is None:
            image_inputs = self._process_images(list(images), bad)
        item = {'input_ids': torch.tensor(input_ids, dtype=torch.long),
                'labels': torch.tensor(labels, dtype=torch.long),
                **image_inputs,
                'id': sample_id}
        if len(input_ids) < num_ids:
            self.notice_counts['truncated'] += 1
            item['notices'] = {'truncated': 1}  # summed per batch by llava_collate_fn
        return item

    def _encode_text(self, index: int, records: JsonRecords, local: int, where) -> _SampleText:
        """Parse record ``index``, check its conversation and images field, tokenise it (before truncation).

        Raises:
            BadSampleError: a malformed record or conversation (the text-only causes).
        """
        try:
            record = records.load(local)
        except MalformedRecordError as err:
            raise BadSampleError(f'sample #{index}: {err}{self._hint()}', 'malformed_json') from None
        if not isinstance(record, dict):
            raise BadSampleError(f'{where()}, sample #{index}: expected a JSON object (a sample), found '
                                 f'{type(record).__name__}. Fix or remove this record.{self._hint()}',
                                 'malformed_json')
        sample_id = str(record.get('id', f'#{index}'))

        bad = self._bad_sample(where, sample_id)

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
            turns = normalize_conversation(conversations, sample_id)
            _check_turns(turns, bad)
            input_ids, labels = encode_conversation(conversations, self.tokenizer, self.template,
                                                    system=self.system, sample_id=sample_id)
        except ConversationError as err:
            raise bad(err.cause, str(err)) from None
        return sample_id, tuple(images), np.array([input_ids, labels], dtype=np.int32)

    def _process_images(self, images: list[str], bad) -> dict[str, Any]:
        """Read and process the sample's images: ``{'pixel_values': …}`` (+ ``image_grid_thw`` for patch grids)."""
        pil_images = [self._read_image(p, bad) for p in images]
        return process_image_inputs(pil_images, self.image_processor, self.pad_image_to_square,
                                    alpha_background=self.alpha_background)

    def _bad_sample(self, where, sample_id: str):
        """``bad(cause, what[, error])``: the :class:`BadSampleError` of sample ``sample_id`` at ``where()``."""
        def bad(cause: str, what: str, error: type[BadSampleError] = BadSampleError) -> BadSampleError:
            return error(f'{where()}, sample id {sample_id!r}: {what}; '
                         f'{BAD_SAMPLE_CAUSES[cause]}.{self._hint()}', cause)
        return bad

    def _hint(self) -> str:
        """How to skip such samples: said in raise mode only (skip mode says what it skipped)."""
        return f' {_SKIP_HINT}' if self.on_bad_sample == 'raise' else ''

    def _truncate(self, input_ids: list[int], labels: list[int], bad,
                  tokens_per_image: list[int] | None = None) -> tuple[list[int], list[int]]:
        """Apply the length rule (see the module docstring); image k takes ``tokens_per_image[k]`` tokens
        (default ``num_image_tokens`` each)."""
        image_pos = [i for i, t in enumerate(input_ids) if t == IMAGE_TOKEN_INDEX]
        if tokens_per_image is None:
            tokens_per_image = [self.num_image_tokens] * len(image_pos)
        extra = sum(n - 1 for n in tokens_per_image)  # each placeholder expands
        if len(input_ids) + extra > self.max_length:
            keep = self.max_length - extra  # ids kept, all images among them
            if image_pos and keep <= image_pos[-1]:
                need = image_pos[-1] + 1 + extra
                raise bad('too_long', f'its {len(image_pos)} image(s) and the text before them need '
                                      f'{need} tokens, more than max_length={self.max_length}')
            if all(label == IGNORE_INDEX for label in labels[:keep]):
                first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
                if first is None:
                    raise bad('no_supervised_tokens', 'no gpt turn with text to learn from')
                first += sum(n - 1 for p, n in zip(image_pos, tokens_per_image) if p < first)
                raise bad('reply_truncated_away',
                          f'after truncation to max_length={self.max_length} no supervised (gpt) '
                          f'token is left: the first reply starts at token {first} '
                          '(image tokens included), so the sample would contribute no loss')
            input_ids, labels = input_ids[:keep], labels[:keep]
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
            return load_image(path, self.max_image_pixels, self.alpha_background, self.exif_transpose)
        except ImageTooLargeError as err:
            raise bad('image_too_large', str(err)) from None
        except UnreadableImageError as err:
            raise bad('unreadable_image', str(err)) from None


def _check_turns(turns: list[tuple[str, str]], bad) -> None:
    """``starts_with_gpt`` and ``empty_reply`` (see the module docstring)."""
    roles = [role for role, _ in turns if role != 'system']
    if roles and roles[0] == 'assistant':
        raise bad('starts_with_gpt', 'the conversation starts with a gpt (assistant) turn, which '
                                     'answers no question')
    for k, (role, text) in enumerate(turns):
        if role == 'assistant' and not text.strip():
            raise bad('empty_reply', f'turn {k} (gpt) has no text')


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
