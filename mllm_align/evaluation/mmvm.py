"""MMVM accuracy of a model (any base the toolkit loads) for the checkpoint runner, resumable per case.

Each question is asked as its benchmark builds it — the two images, then the question text (which holds the
options) — in one human turn ``<image>\\n<image>\\n{question}`` under the model's chat template, greedy decoding.
The answer's letter is read with :func:`~mllm_align.metrics.mmvm.extract_choice` (``policy``), scored against
the TSV's answer, and reported by :func:`~mllm_align.metrics.mmvm.mmvm_report` (overall, the eight match types,
by number of candidates). ``circular=True`` asks every question once per rotation of its candidate options
(:func:`~mllm_align.metrics.mmvm.rotate_options`; the question's trailing option block is rewritten) and counts
it right only if right every time.

Predictions are appended to ``<out>/predictions/<checkpoint>.jsonl`` after every batch (with the checkpoint's
identity and the settings in its first line), so a run killed mid-checkpoint continues where it stopped; a
finished checkpoint is skipped by the runner as usual.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from ..constants import DEFAULT_IMAGE_TOKEN
from ..data.mmvm import MMVMCase
from ..metrics.mmvm import MATCH_TYPES, Policy, circular_hits, extract_choice, mmvm_report, rotate_options
from .chat import build_chat_batch, decode_answers, generate_answer_ids
from .evaluator import ModelEvaluator

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..models.base import MultimodalModel

__all__ = ['MMVM_RESULTS_FORMAT', 'MMVMEvaluator', 'plot_categories', 'report_table', 'rotated_question']

MMVM_RESULTS_FORMAT = 'mllm_align.eval.mmvm/1'
CACHE_FORMAT = 'mllm_align.mmvm_predictions/1'


def _options_block(options: Mapping[str, str]) -> str:
    return '\n'.join(f'{k}. {v}' for k, v in options.items())


def rotated_question(case: MMVMCase, shift: int) -> tuple[str, dict[str, str], str]:
    """(question text, options, answer letter) of ``case`` with its candidates rotated by ``shift``.

    Raises:
        ValueError: the question does not end with its option block (then its options cannot be rewritten).
    """
    options, answer = rotate_options(case.options, case.answer, shift)
    block = _options_block(case.options)
    body = case.question.rstrip()
    if not body.endswith(block):
        raise ValueError(f'Question {case.index} (line {case.line}) does not end with its options '
                         f'("{block[:40]}…"): circular evaluation rewrites that block; score it without --circular.')
    return body[:len(body) - len(block)] + _options_block(options) + case.question[len(body):], options, answer


class MMVMEvaluator(ModelEvaluator):
    """Accuracy on MMVM questions (module docstring).

    Args:
        cases: the questions (:func:`~mllm_align.data.mmvm.load_mmvm`).
        image_processor: the training image processor (None: the model's ``process_images``).
        pad_to_square: pad images to a square before ``image_processor``.
        batch_size: questions per generation batch.
        max_new_tokens: answer length cap.
        policy: answer extraction (``'strict'`` or ``'vlmevalkit'``).
        circular: ask each question once per rotation of its candidates (right only if right every time).
        system: system prompt (default: the template's).
        judge: for ``strict``, asked when the rules find nothing (deterministic; see ``extract_choice``).
        source: where the cases came from (the TSV), for the settings.
    """

    name = 'mmvm'
    results_format = MMVM_RESULTS_FORMAT

    def __init__(self, cases: Sequence[MMVMCase], *, image_processor: Any = None, pad_to_square: bool = True,
                 batch_size: int = 4, max_new_tokens: int = 32, policy: Policy = 'strict', circular: bool = False,
                 system: str | None = None, judge: Callable[[str, Mapping[str, str]], str | None] | None = None,
                 source: str | os.PathLike | None = None) -> None:
        super().__init__()
        if not cases:
            raise ValueError('MMVMEvaluator needs at least one question.')
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f'batch_size={batch_size}, max_new_tokens={max_new_tokens}: use 1 or more.')
        if policy not in ('strict', 'vlmevalkit'):
            raise ValueError(f"policy={policy!r}: use 'strict' or 'vlmevalkit'.")
        self.cases = list(cases)
        self.image_processor = image_processor
        self.pad_to_square = pad_to_square
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.policy: Policy = policy
        self.circular = circular
        self.system = system
        self.judge = judge
        self.source = str(source) if source is not None else None
        # the rows asked: (case position, rotation) -> (question text, options, answer)
        self.rows: list[tuple[int, int, str, dict[str, str], str]] = []
        for i, case in enumerate(self.cases):
            shifts = range(case.num_candidates) if circular else range(1)
            for shift in shifts:
                text, options, answer = rotated_question(case, shift) if shift else (case.question, case.options,
                                                                                      case.answer)
                self.rows.append((i, shift, text, options, answer))
        self._cache_path: Path | None = None
        self._cached: dict[str, str] = {}

    # ------------------------------------------------------------------ what is scored
    def settings(self) -> dict[str, Any]:
        return dict(source=self.source, num_cases=len(self.cases), indices_sha=_digest([c.index for c in self.cases]),
                    max_new_tokens=self.max_new_tokens, policy=self.policy, circular=self.circular,
                    system=self.system, pad_to_square=self.pad_to_square, judge=None if self.judge is None else
                    getattr(self.judge, '__name__', type(self.judge).__name__),
                    image_processor='model' if self.image_processor is None else type(self.image_processor).__name__)

    def num_samples(self) -> int:
        return len(self._pending())

    @staticmethod
    def _key(index: str, shift: int) -> str:
        return f'{index}@{shift}'

    def _pending(self) -> list[tuple[int, int, str, dict[str, str], str]]:
        return [r for r in self.rows if self._key(self.cases[r[0]].index, r[1]) not in self._cached]

    # ------------------------------------------------------------------ per-case resume
    def begin_checkpoint(self, name: str, out_dir: Path, key: dict[str, Any]) -> None:
        """Open ``<out_dir>/predictions/<name>.jsonl``; keep its predictions if made by this checkpoint with
        these settings (else start it afresh)."""
        path = Path(out_dir) / 'predictions' / f'{Path(name).stem}.jsonl'
        header = dict(format=CACHE_FORMAT, checkpoint=key, settings=json.loads(json.dumps(self.settings())))
        self._cached = {}
        if path.is_file():
            lines = path.read_text().splitlines()
            try:
                first = json.loads(lines[0]) if lines else None
            except json.JSONDecodeError:
                first = None
            if first == header:
                for line in lines[1:]:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line torn by a kill: asked again
                        continue
                    self._cached[row['key']] = row['prediction']
        if not self._cached:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(header) + '\n')
        self._cache_path = path

    def _append(self, rows: list[dict[str, Any]]) -> None:
        if self._cache_path is None:
            return
        with self._cache_path.open('a') as f:
            for row in rows:
                f.write(json.dumps(row) + '\n')
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------------ generation
    def batches(self, model: 'MultimodalModel') -> Iterable[dict[str, Any]]:
        from ..data.image_loading import load_image

        pending = self._pending()
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            images, convs, keys = [], [], []
            for i, shift, text, _, _ in chunk:
                case = self.cases[i]
                try:
                    images.append([load_image(str(p)) for p in case.images])
                except (ValueError, OSError) as exc:  # too large, unreadable
                    raise ValueError(f'MMVM question {case.index} (line {case.line}): {exc}') from exc
                marks = '\n'.join([DEFAULT_IMAGE_TOKEN] * len(case.images))
                convs.append([{'from': 'human', 'value': f'{marks}\n{text}'}])
                keys.append(self._key(case.index, shift))
            data = build_chat_batch(model, images, convs, image_processor=self.image_processor,
                                    pad_to_square=self.pad_to_square, system=self.system, sample_ids=keys)
            yield dict(keys=keys, data=data)

    def run_batch(self, model: 'MultimodalModel', data_batch: dict[str, Any]) -> Sequence[str]:
        ids = generate_answer_ids(model, data_batch['data'], max_new_tokens=self.max_new_tokens)
        answers = decode_answers(model, ids)
        self._append([dict(key=k, prediction=a) for k, a in zip(data_batch['keys'], answers)])
        return answers

    def process(self, data_batch: Any, outputs: Sequence[str]) -> None:
        self.results.extend(zip(data_batch['keys'], outputs))

    def score_predictions(self, predictions: Mapping[str, str]) -> dict[str, Any]:
        """The record for predictions ``{'<index>@<rotation>': text}`` of every row (also for a file scored
        without a model)."""
        missing = [self._key(self.cases[i].index, s) for i, s, *_ in self.rows
                   if self._key(self.cases[i].index, s) not in predictions]
        if missing:
            raise ValueError(f'No prediction for {len(missing)} of {len(self.rows)} questions (first: {missing[:3]}).')
        per_case: dict[int, list[int]] = {}
        rows = []
        for i, shift, _, options, answer in self.rows:
            case = self.cases[i]
            text = predictions[self._key(case.index, shift)]
            choice = extract_choice(text, options, self.policy, judge=self.judge)
            hit = int(choice == answer)
            per_case.setdefault(i, []).append(hit)
            rows.append(dict(index=case.index, rotation=shift, answer=answer, prediction=text, choice=choice,
                             hit=hit, match_type=case.match_type))
        order = sorted(per_case)
        hits = circular_hits([per_case[i] for i in order]) if self.circular else [per_case[i][0] for i in order]
        report = mmvm_report([self.cases[i].match_type for i in order], hits, self.policy,
                             num_candidates=[self.cases[i].num_candidates for i in order],
                             indices=[self.cases[i].index for i in order])
        unread = sum(r['choice'] is None for r in rows)
        # a uniform random pick among the options (circular: right in every rotation by chance)
        chance = [(1 / len(self.cases[i].options)) ** (len(per_case[i]) if self.circular else 1) for i in order]
        return dict(accuracy=report.overall, num_questions=report.count, unread=unread,
                    chance_accuracy=sum(chance) / len(chance),
                    **{f'acc_{t}': report.per_type[t] for t in MATCH_TYPES},
                    per_type_count=report.per_type_count, by_candidates=report.by_candidates,
                    by_candidates_count=report.by_candidates_count, errors=report.errors, policy=self.policy,
                    circular=self.circular, predictions=rows)

    def compute_metrics(self, results: list) -> dict[str, Any]:
        predictions = dict(self._cached)
        predictions.update(dict(results))
        return self.score_predictions(predictions)

    # ------------------------------------------------------------------ outputs
    def report(self, record: dict[str, Any]) -> Any:
        return report_table(record)

    def plot(self, records: list[dict[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
        """``mmvm_categories.png`` (per-type accuracy of each checkpoint, grouped bars) and the curve plot."""
        paths = super().plot(records, out_dir)
        path = Path(out_dir) / 'mmvm_categories.png'
        plot_categories({Path(r['checkpoint']).name: r for r in records}, path)
        return paths + [path]


def report_table(record: dict[str, Any]) -> Any:
    """A rich table of one MMVM record: Overall, the eight types, the candidate-count buckets (%, n)."""
    from rich.table import Table

    table = Table(title=f'MMVM ({record["num_questions"]} questions, {record["policy"]}'
                        f'{", circular" if record.get("circular") else ""})')
    table.add_column('')
    table.add_column('accuracy', justify='right')
    table.add_column('n', justify='right')
    table.add_row('Overall', f'{100 * record["accuracy"]:.1f}', str(record['num_questions']))
    for t in MATCH_TYPES:
        acc = record.get(f'acc_{t}')
        table.add_row(t, '–' if acc is None else f'{100 * acc:.1f}', str(record['per_type_count'][t]))
    for k, acc in record.get('by_candidates', {}).items():
        table.add_row(f'candidates {k}', '–' if acc is None else f'{100 * acc:.1f}',
                      str(record['by_candidates_count'][k]))
    if record.get('chance_accuracy') is not None:
        table.caption = (f'chance (a random option) {100 * record["chance_accuracy"]:.1f} %; answers no option '
                         f'could be read from: {record.get("unread", 0)}')
    return table


def plot_categories(runs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Grouped bar chart: Overall and the eight types (accuracy %), one bar per run (``{label: record}``)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    names = ['Overall', *MATCH_TYPES]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.5), dpi=100)
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(names))
    for k, (label, rec) in enumerate(runs.items()):
        vals = [rec['accuracy']] + [rec.get(f'acc_{t}') for t in MATCH_TYPES]
        ax.bar(x + k * width - 0.4 + width / 2, [100 * v if v is not None else 0 for v in vals], width, label=label)
    ax.set_xticks(x, names)
    ax.set_ylabel('accuracy (%)')
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _digest(items: Sequence[str]) -> str:
    import hashlib
    return hashlib.sha256('\n'.join(items).encode()).hexdigest()[:16]
