"""Length-grouped, modality-separated sampling for LLaVA-style training under mmengine.

LLaVA's ``LengthGroupedSampler(group_by_modality_length=True)`` keeps batches of image–text and
text-only samples apart (an all-text batch skips the vision tower; mixed batches waste padding)
and groups samples of similar length; HF's length-grouped sampler sorts by length inside
"megabatches" of ``mega_batch_mult`` global batches. This sampler does both, in numpy, for the
distributed case, deterministically for a given ``seed`` and epoch:

1. split indices by the sign of ``dataset.modality_lengths`` (> 0: with images, < 0: text-only);
2. in each modality: shuffle, cut into megabatches of ``mega_batch_mult × world_size ×
   per_device_batch_size``, sort each by length (longest first), cut into global batches;
3. shuffle the global batches of both modalities together, move the one holding the longest
   sample to the front (an out-of-memory shows at the first step), and append the two incomplete
   remainders (the only batch that may mix modalities);
4. pad by repeating (``round_up``) and deal round-robin: rank r takes positions r, r + W, … so each
   of its per-device batches comes from one global batch.

Differences from LLaVA (``llava/train/llava_trainer.py``): LLaVA shuffles the per-modality lists
with the global RNG (not reproducible) and sorts only within one global batch; here every step
uses ``np.random.default_rng([seed, epoch])`` and megabatches as in HF's sampler.

Use in a config: ``sampler=dict(type=LengthGroupedSampler, per_device_batch_size=...)``;
mmengine's ``Runner.build_dataloader`` adds ``dataset`` and ``seed`` (and calls ``set_epoch``
through ``DistSamplerSeedHook``).
"""
from __future__ import annotations

import math
from typing import Iterator, Sized

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

__all__ = ['LengthGroupedSampler', 'length_grouped_indices']


def length_grouped_indices(modality_lengths: np.ndarray, global_batch_size: int,
                           megabatch_size: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch's order of all indices (steps 1–3 of the module docstring).

    Args:
        modality_lengths: ``[N]`` non-zero lengths, negative for text-only samples.
        global_batch_size: ``world_size × per_device_batch_size``.
        megabatch_size: samples sorted by length together (a multiple of the global batch).
        rng: the epoch's generator.

    Returns:
        int64 ``[N]``, a permutation of ``range(N)``.
    """
    lengths = np.asarray(modality_lengths, dtype=np.int64)
    full_batches, remainders = [], []
    for group in (np.flatnonzero(lengths > 0), np.flatnonzero(lengths < 0)):
        if len(group) == 0:
            continue
        idx = group[rng.permutation(len(group))]
        size = np.abs(lengths[idx])
        megabatch = np.arange(len(idx)) // megabatch_size
        idx = idx[np.lexsort((-size, megabatch))]  # by megabatch, then longest first
        n_full = len(idx) // global_batch_size * global_batch_size
        full_batches.append(idx[:n_full].reshape(-1, global_batch_size))  # (n_batches, G)
        remainders.append(idx[n_full:])
    batches = np.concatenate(full_batches) if full_batches else np.zeros((0, global_batch_size), np.int64)
    batches = batches[rng.permutation(len(batches))]
    if len(batches) > 1:  # the batch with the longest sample goes first
        longest = int(np.argmax(np.abs(lengths[batches]).max(axis=1)))
        batches[[0, longest]] = batches[[longest, 0]]
    return np.concatenate([batches.reshape(-1)] + remainders).astype(np.int64)


@DATA_SAMPLERS.register_module()
class LengthGroupedSampler(Sampler):
    """Distributed sampler grouping samples by modality and length (see the module docstring).

    Args:
        dataset: a dataset with ``modality_lengths`` (or ``lengths``), e.g. ``LLaVADataset``.
        per_device_batch_size: samples per process per step (include gradient accumulation:
            ``batch_size × accumulative_counts``, so that one optimiser step sees one group).
        mega_batch_mult: global batches per length-sorted megabatch; default
            ``min(N // (4 × global batch), 50)``, at least 1.
        seed: shared by all ranks; None draws one and broadcasts it (mmengine's convention).
        round_up: pad by repetition so every rank gets ``ceil(N / world_size)`` indices; if
            False, ranks get ``N`` indices in total (the last ranks one fewer).
        length_property: the dataset attribute to group by.

    Raises:
        TypeError: the dataset has no ``length_property``.
        ValueError: a zero length, a length list of the wrong size, or a bad batch size.
    """

    def __init__(self, dataset: Sized, per_device_batch_size: int,
                 mega_batch_mult: int | None = None, seed: int | None = None,
                 round_up: bool = True, length_property: str = 'modality_lengths') -> None:
        rank, world_size = get_dist_info()
        self.rank, self.world_size = rank, world_size
        self.dataset = dataset
        if per_device_batch_size < 1:
            raise ValueError(f'per_device_batch_size must be >= 1, got {per_device_batch_size}.')
        lengths = getattr(dataset, length_property, None)
        if lengths is None and length_property == 'modality_lengths':
            lengths = getattr(dataset, 'lengths', None)
        if lengths is None:
            raise TypeError(f'{type(dataset).__name__} has no `{length_property}`; '
                            'LengthGroupedSampler needs per-sample lengths (LLaVADataset provides them).')
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if len(self.lengths) != len(dataset):
            raise ValueError(f'{length_property} has {len(self.lengths)} entries for a dataset of '
                             f'{len(dataset)} samples.')
        if np.any(self.lengths == 0):
            raise ValueError(f'{length_property} contains zeros (sample {int(np.argmin(np.abs(self.lengths)))}); '
                             'lengths must be positive (with images) or negative (text-only).')
        self.per_device_batch_size = per_device_batch_size
        global_batch = per_device_batch_size * world_size
        if mega_batch_mult is None:
            mega_batch_mult = min(len(dataset) // (global_batch * 4), 50)
        self.mega_batch_mult = max(int(mega_batch_mult), 1)
        self.global_batch_size = global_batch
        self.seed = sync_random_seed() if seed is None else int(seed)
        self.epoch = 0
        self.round_up = round_up
        if round_up:
            self.num_samples = math.ceil(len(dataset) / world_size)
            self.total_size = self.num_samples * world_size
        else:
            self.num_samples = math.ceil((len(dataset) - rank) / world_size)
            self.total_size = len(dataset)

    def global_indices(self) -> np.ndarray:
        """This epoch's order over all ranks (before padding and dealing)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        return length_grouped_indices(self.lengths, self.global_batch_size,
                                      self.mega_batch_mult * self.global_batch_size, rng)

    def __iter__(self) -> Iterator[int]:
        indices = self.global_indices()
        if self.round_up and self.total_size > len(indices):
            reps = math.ceil(self.total_size / len(indices))
            indices = np.tile(indices, reps)[:self.total_size]
        return iter(indices[self.rank:self.total_size:self.world_size].tolist())

    def __len__(self) -> int:
        """Indices this rank yields per epoch."""
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use a new order for ``epoch`` (called by mmengine's ``DistSamplerSeedHook``)."""
        self.epoch = epoch
