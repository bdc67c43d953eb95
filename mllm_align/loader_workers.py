"""How many DataLoader worker processes a training rank gets: :func:`default_num_workers`.

``projects/_base_/default_loader.py`` calls it in PART 1 (``dataloader_num_workers = default_num_workers()``) for
every base recipe, and so for their method recipes, twins and demo configs, so that every run reads its data through
the recipe's own loader: on GPU nodes persistent workers that prefetch
(``prefetch_factor`` batches each), with reading, decoding, processing and tokenising off the training step's
critical path; on a CPU-only machine none (the step has every core; see the function). It sits below every
package and imports only ``os`` at import time (``torch`` when called, which a training process has already):
a config calls it while it is parsed (``mllm_align.data`` re-exports it).
"""
from __future__ import annotations

import os

__all__ = ['default_num_workers', 'available_cpus']


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (what ``taskset`` / a cgroup cpuset leaves), else
    ``os.cpu_count()``, else 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_num_workers(cap: int = 4, local_world_size: int | None = None, cpus: int | None = None,
                        accelerator: bool | None = None) -> int:
    """DataLoader workers per training process: ``max(1, min(cap, cpus // local_world_size - 1))`` when the step
    runs on an accelerator, ``0`` when it runs on the CPU.

    * ``cpus // local_world_size``: the cores of one node shared evenly by the ranks on it (``LOCAL_WORLD_SIZE``,
      set by torchrun / ``tools/dist.sh``; 1 without a launcher), the same split ``tools/dist.sh`` makes for
      ``OMP_NUM_THREADS``;
    * ``- 1``: one of a rank's cores stays with the rank itself (the Python loop that launches kernels, or the
      CPU forward/backward), so workers fill the cores a rank would otherwise leave idle;
    * ``min(cap, …)``: beyond a few workers per rank a LLaVA pipeline (one image read + resize + tokenise per
      sample, ≈ 3–5 ms) outpaces any GPU step, and each worker holds its own copy of the dataset's caches and
      index, so more only costs memory and start-up (``cap=4``: LLaVA's and xtuner's value);
    * ``max(1, …)``: even a rank with a single core gets one worker, so that data preparation overlaps the step
      instead of running inside it;
    * no accelerator (CPU training, the tiny twins here): 0. The step itself then runs on every core
      (``tools/dist.sh`` gives each rank cores / ranks OpenMP threads), so there is no idle core for a worker to
      fill: measured on 2 cores (``docs/benchmarks.md``, "Data off the critical path"), one worker per rank halved
      ``data_time`` but made the step slower by more than it saved. The dataset's own caches (tokenised text, the
      CLIP fast path) still take most of the data work off each step.

    Deterministic for a given machine and launch (no timing, no load measurement), so a config evaluates to the
    same value on every rank and again on resume; the data *order* does not depend on it (the sampler decides
    order, and each worker's item for an index is the same as the main process's).

    Args:
        cap: most workers per rank.
        local_world_size: ranks on this node (default: ``$LOCAL_WORLD_SIZE``, else 1).
        cpus: CPUs of this process (default: :func:`available_cpus`).
        accelerator: whether the step runs on a GPU (default: ``torch.cuda.is_available()``, read without
            creating a CUDA context).
    """
    if local_world_size is None:
        local_world_size = int(os.environ.get('LOCAL_WORLD_SIZE', '1') or 1)
    cpus = available_cpus() if cpus is None else cpus
    if accelerator is None:
        import torch  # (already imported by every training process; only the config's parse reaches here)
        accelerator = torch.cuda.is_available()
    if not accelerator:
        return 0
    return max(1, min(int(cap), cpus // max(1, int(local_world_size)) - 1))
