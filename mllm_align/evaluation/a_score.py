"""A score, v3, of the Law of Vision Representation: the caption log-likelihood under the stage-1 model.

After stage 1 (projector pre-training with the LLM frozen), how well the LLM can read the representation
is measured by how likely it finds the captions of images it is shown. Over N image–caption pairs
(default 100, a seeded sample of the stage-1 caption data):

    A_v3 = (1/N) Σ_i (1/|c_i|) Σ_{t ∈ c_i} log p(c_i,t | image_i, c_i,<t),

c_i being exactly the tokens the training code supervises for pair i (labels ≠ −100 under the config's
template), so A_v3 is minus the mean over pairs of each pair's caption loss. Higher is better; the paper's
v3 table has A between −4.13 (SD3) and −1.81 (SigLIP2-L).

The evaluator runs on the checkpoint runner (every iteration of a work dir, or one checkpoint) through the
model interface only — ``prepare_inputs`` then ``run_llm`` with logits at the supervised positions — so it
works on every base and with plug-ins (MoCa) attached. Batches are right-padded; a pair's value does not
depend on what it is batched with.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch

from ..constants import IGNORE_INDEX
from ..models.base import supervised_positions
from .evaluator import ModelEvaluator

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..models.base import MultimodalModel

__all__ = ['A_SCORE_RESULTS_FORMAT', 'AScoreEvaluator', 'caption_log_likelihood']

A_SCORE_RESULTS_FORMAT = 'mllm_align.eval.a_score/1'


def _to_device(data: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device)
        elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            out[k] = [x.to(device) for x in v]
        else:
            out[k] = v
    return out


def caption_log_likelihood(model: 'MultimodalModel', data: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample of a collated batch: (sum of supervised-token log-probabilities, number of them), ``[B]`` each.

    Token t of sample b is scored when ``labels[b, t] ≠ −100``, predicted from position t − 1 (the training
    loss's rule). Logits are computed only at the positions that predict a supervised token.
    """
    inputs = model.prepare_inputs(data)
    if inputs.labels is None:
        raise ValueError('caption_log_likelihood needs `labels` in the batch (the dataset supervises the captions).')
    positions = supervised_positions(inputs.labels)  # (P,)
    keep = {'logits_to_keep': positions} if getattr(model, 'supports_logits_to_keep', False) else {}
    logits = model.run_llm(inputs, **keep).logits  # (B, P, V) or (B, L, V)
    if not keep:
        logits = logits[:, positions]
    targets = inputs.labels[:, positions + 1]  # (B, P)
    supervised = targets != IGNORE_INDEX
    rows = supervised.nonzero()[:, 0]  # the sample of each supervised (b, t)
    nll = torch.nn.functional.cross_entropy(logits[supervised].float(), targets[supervised], reduction='none')
    total = torch.zeros(targets.shape[0], device=nll.device).index_add_(0, rows, -nll)  # Σ log p per sample
    return total, supervised.sum(-1)


class AScoreEvaluator(ModelEvaluator):
    """A_v3 of each checkpoint over fixed pairs (module docstring).

    Args:
        samples: the N dataset items (``LLaVADataset`` items: ``input_ids``, ``labels``, ``pixel_values``, ``id``),
            already chosen and processed; the same items are scored for every checkpoint.
        collate_fn: turns a list of items into the model's batch (``llava_collate_fn``).
        batch_size: pairs per forward pass.
        settings: what chose the pairs (data file, N, seed, template …): the skip fingerprint.
    """

    name = 'a_score'
    results_format = A_SCORE_RESULTS_FORMAT

    def __init__(self, samples: Sequence[dict[str, Any]], collate_fn: Callable[[list], dict[str, Any]],
                 batch_size: int = 8, settings: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not samples:
            raise ValueError('AScoreEvaluator needs at least one image–caption pair.')
        if batch_size < 1:
            raise ValueError(f'batch_size={batch_size}: use 1 or more.')
        for item in samples:
            if not (item['labels'] != IGNORE_INDEX).any():
                raise ValueError(f'A-score sample {item.get("id")!r} has no supervised caption token (an empty '
                                 'caption, or truncated away by max_length): remove it from the data.')
        self.samples = list(samples)
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self._settings = dict(settings or {}, num_pairs=len(self.samples))

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    def info(self) -> dict[str, Any]:
        return dict(pairs=[str(s.get('id')) for s in self.samples])

    def num_samples(self) -> int:
        return len(self.samples)

    def batches(self, model: 'MultimodalModel') -> Iterable[dict[str, Any]]:
        device = next(model.parameters()).device
        for start in range(0, len(self.samples), self.batch_size):
            batch = self.collate_fn(self.samples[start:start + self.batch_size])
            data = batch['data'] if 'data' in batch else batch
            yield _to_device(data, device)

    def run_batch(self, model: 'MultimodalModel', data_batch: dict[str, Any]) -> Sequence[tuple[float, int]]:
        total, count = caption_log_likelihood(model, data_batch)
        return list(zip(total.tolist(), count.tolist()))

    def process(self, data_batch: Any, outputs: Sequence[tuple[float, int]]) -> None:
        self.results.extend(outputs)

    def compute_metrics(self, results: list) -> dict[str, Any]:
        per_pair = [t / n for t, n in results]
        a = sum(per_pair) / len(per_pair)
        return dict(a_score_v3=a, caption_nll=-a, pairs=len(per_pair), tokens=int(sum(n for _, n in results)))
