"""Bad samples: the error every dataset raises for one, and the skip-and-count policy they share.

A dataset built with ``on_bad_sample='raise'`` lets a :class:`BadSampleError` (its message names the file, the
record and the fix) stop the run. With ``'skip'``, :class:`SkipsBadSamples` serves the next good sample in
index order instead, counts the skip per cause (``skip_counts``), warns once per cause, and marks the served
item with ``item['skipped'] = {cause: n}`` so that counts made inside DataLoader workers reach the main process
through the collate function (``DatasetInfoHook`` logs them). Skipping is deterministic: the same index always
gives the same item.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from mmengine.logging import print_log


class BadSampleError(ValueError):
    """A sample that cannot be used; ``cause`` is a key of the dataset's table of causes."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class MissingImageError(BadSampleError, FileNotFoundError):
    """A sample's image file does not exist (also a ``FileNotFoundError``)."""


class SkipsBadSamples:
    """``__getitem__`` with the ``on_bad_sample`` policy (module docstring), for a dataset that defines ``_load``.

    A subclass calls :meth:`_init_bad_samples` in its ``__init__`` and implements ``__len__`` and
    ``_load(index) -> dict`` (raising :class:`BadSampleError`); ``bad_sample_noun`` names its items in messages
    and :meth:`_bad_sample_source` the data it reads.
    """

    bad_sample_noun = 'sample'

    def _init_bad_samples(self, on_bad_sample: str) -> None:
        if on_bad_sample not in ('raise', 'skip'):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}.")
        self.on_bad_sample = on_bad_sample
        self.skip_counts: Counter[str] = Counter()
        self._warned: set[str] = set()

    def _load(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def _bad_sample_source(self) -> str:
        """What the "every sample is bad" error names (the data files or root)."""
        return type(self).__name__

    @property
    def num_skipped(self) -> int:
        """Bad samples skipped so far in this process (each DataLoader worker counts its own)."""
        return sum(self.skip_counts.values())

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)  # type: ignore[arg-type]
        if not -n <= index < n:
            raise IndexError(f'index {index} out of range for a dataset of {n} {self.bad_sample_noun}s.')
        index %= n
        if self.on_bad_sample == 'raise':
            return self._load(index)
        skipped: Counter[str] = Counter()
        for attempt in range(n):
            try:
                item = self._load((index + attempt) % n)
            except BadSampleError as err:
                self._record_skip(err)
                skipped[err.cause] += 1
                continue
            if skipped:
                item['skipped'] = dict(skipped)
            return item
        raise RuntimeError(f'Every one of the {n} {self.bad_sample_noun}s of {self._bad_sample_source()} is bad '
                           f'(causes: {dict(self.skip_counts)}); nothing to train on. Set '
                           "on_bad_sample='raise' to see the first one with its location and fix.")

    def _record_skip(self, err: BadSampleError) -> None:
        self.skip_counts[err.cause] += 1
        if err.cause not in self._warned:
            self._warned.add(err.cause)
            noun = self.bad_sample_noun
            print_log(f'Skipped a bad {noun} ({err.cause}) and used the next one instead: {err} Further '
                      f'{err.cause!r} {noun}s are skipped without a message; DatasetInfoHook logs the count per '
                      "cause. To list each one, load the dataset with on_bad_sample='raise' and read every index, "
                      'e.g. `[ds[i] for i in range(len(ds))]`, catching BadSampleError.',
                      logger='current', level=logging.WARNING)
