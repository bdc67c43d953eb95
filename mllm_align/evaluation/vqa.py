"""VQA accuracy (exact match of a one-word answer) as pure functions, and :class:`VQAEvaluator` for the runner.

Scoring rule (:func:`normalize_answer`, :func:`is_correct`). Both texts are lower-cased and cut into words
(runs of ASCII letters and digits, inner ``'``/``-`` kept; every other character, punctuation included, separates
words), and a leading article (``a``, ``an``, ``the``) is dropped when more words follow. Then

* ``match='first_word'`` (default): the FIRST word of the prediction must equal the whole normalised truth.
  ``"Red."``, ``"red circle"``, ``"a star"`` count for ``red`` / ``red`` / ``star``; ``"The shape is red."``
  does NOT count for ``red`` (its first word after the article is ``shape``): the prompts ask for one word,
  and searching the sentence for the answer would reward a model that lists every colour.
* ``match='exact'``: all words of the prediction must equal the truth's (``"red circle"`` ≠ ``red``).

No synonym or number mapping (``2`` ≠ ``two``): easy-VQA and the shapes data answer in words.

Accuracy = (1/N) Σ_i [norm(p_i) = norm(a_i)]; per answer (the truths' recall) and per question type, where
the type is :func:`question_type`: the question's first two words, lower-cased (``<image>`` and punctuation
removed), e.g. ``what color``, ``what shape``, ``is there``, ``how many``. The majority baseline
(:func:`majority_baseline`) always answers the most frequent normalised truth of a reference set (the
evaluated answers, or the training answers) and scores its frequency among the evaluated answers.

:class:`VQAEvaluator` generates a short greedy answer for every question of a LLaVA JSON/JSONL file
(:func:`load_vqa_samples`; batched through :func:`~mllm_align.evaluation.chat.build_chat_batch`, the model's
public ``prepare_inputs`` / ``generate_ids``) and records accuracy, the baseline, the per-type and per-answer
tables and the raw predictions; :meth:`VQAEvaluator.write_predictions` writes them as JSONL and
:meth:`VQAEvaluator.write_answer_grid` a PNG of answered images.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

from ..constants import DEFAULT_IMAGE_TOKEN
from .chat import build_chat_batch, decode_answers, generate_answer_ids
from .evaluator import ModelEvaluator, sorted_records

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..models.base import MultimodalModel

__all__ = ['ANSWER_MATCHES', 'VQAEvaluator', 'VQASample', 'VQA_RESULTS_FORMAT', 'answer_words', 'is_correct',
           'load_answers', 'load_vqa_samples', 'majority_baseline', 'normalize_answer', 'question_type', 'vqa_accuracy']

Match = Literal['exact', 'first_word']
ANSWER_MATCHES: tuple[str, ...] = ('exact', 'first_word')
VQA_RESULTS_FORMAT = 'mllm_align.eval.vqa/1'
ARTICLES = frozenset({'a', 'an', 'the'})
_WORD = re.compile(r"[0-9a-z]+(?:['\-][0-9a-z]+)*")


def _check_match(match: str) -> None:
    if match not in ANSWER_MATCHES:
        raise ValueError(f'match={match!r}: use one of {ANSWER_MATCHES}.')


def answer_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (module docstring), without a leading article when more words follow."""
    words = _WORD.findall(str(text).lower())
    if len(words) > 1 and words[0] in ARTICLES:
        words = words[1:]
    return words


def normalize_answer(text: str, match: Match = 'first_word') -> str:
    """The text an answer is compared as: its words joined by one space (``'exact'``), or its first word
    (``'first_word'``); ``''`` for an answer without words.

    Examples: ``' Red. '`` → ``'red'``; ``'The star'`` → ``'star'``; ``'The shape is red.'`` → ``'shape'``
    (``first_word``) or ``'shape is red'`` (``exact``).

    Raises:
        ValueError: an unknown ``match``.
    """
    _check_match(match)
    words = answer_words(text)
    if not words:
        return ''
    return words[0] if match == 'first_word' else ' '.join(words)


def is_correct(prediction: str, answer: str, match: Match = 'first_word') -> bool:
    """Whether ``prediction`` scores for ``answer``: ``normalize_answer(prediction, match)`` equals the truth
    normalised whole (``normalize_answer(answer, 'exact')``) and is not empty."""
    pred = normalize_answer(prediction, match)
    return bool(pred) and pred == normalize_answer(answer, 'exact')


def question_type(question: str, num_words: int = 2) -> str:
    """The question's type: its first ``num_words`` words, lower-cased, ``<image>`` and punctuation removed
    (``'<image>\\nWhat colour is the shape?'`` → ``'what colour'``); ``'other'`` for a question without words."""
    words = _WORD.findall(question.replace(DEFAULT_IMAGE_TOKEN, ' ').lower())
    return ' '.join(words[:num_words]) if words else 'other'


def _table(keys: Sequence[str], correct: Sequence[bool]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for key, ok in zip(keys, correct):
        row = table.setdefault(key, {'count': 0, 'correct': 0})
        row['count'] += 1
        row['correct'] += int(ok)
    for row in table.values():
        row['accuracy'] = row['correct'] / row['count']
    return dict(sorted(table.items()))


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str], questions: Sequence[str] | None = None,
                 match: Match = 'first_word') -> dict[str, Any]:
    """Accuracy of ``predictions`` against ``answers`` (module docstring for the rule).

    Args:
        predictions: N generated answers.
        answers: N ground-truth answers.
        questions: N question texts, for the per-type table (None: no ``per_type``).
        match: ``'first_word'`` or ``'exact'``.

    Returns:
        ``{'accuracy', 'num_correct', 'num_samples', 'correct': [bool] * N, 'per_answer': {truth: {'count',
        'correct', 'accuracy'}}, 'per_type': {type: {...}}}`` (tables sorted by key; ``accuracy`` 0.0 for N = 0).

    Raises:
        ValueError: lengths differ, or an unknown ``match``.
    """
    _check_match(match)
    if len(predictions) != len(answers) or (questions is not None and len(questions) != len(answers)):
        raise ValueError(f'vqa_accuracy: {len(predictions)} predictions, {len(answers)} answers'
                         + ('' if questions is None else f', {len(questions)} questions') + '; they must match.')
    correct = [is_correct(p, a, match) for p, a in zip(predictions, answers)]
    n_correct = sum(correct)
    out: dict[str, Any] = dict(accuracy=n_correct / len(answers) if answers else 0.0, num_correct=n_correct,
                               num_samples=len(answers), correct=correct,
                               per_answer=_table([normalize_answer(a, 'exact') for a in answers], correct))
    if questions is not None:
        out['per_type'] = _table([question_type(q) for q in questions], correct)
    return out


def majority_baseline(answers: Sequence[str], eval_answers: Sequence[str] | None = None) -> tuple[str, float]:
    """The constant answer a no-image model would give, and its accuracy.

    The answer is the most frequent normalised (``'exact'``) truth in ``answers`` (ties: the alphabetically
    first); the accuracy is its frequency among ``eval_answers`` (default: ``answers`` themselves), i.e. the
    accuracy of always answering it.

    Raises:
        ValueError: ``answers`` is empty.
    """
    if not answers:
        raise ValueError('majority_baseline needs at least one answer.')
    counts = Counter(normalize_answer(a, 'exact') for a in answers)
    best = min(counts, key=lambda a: (-counts[a], a))
    targets = answers if eval_answers is None else eval_answers
    hits = sum(normalize_answer(a, 'exact') == best for a in targets)
    return best, hits / len(targets) if targets else 0.0


def _question_key(question: str) -> str:
    return ' '.join(question.replace(DEFAULT_IMAGE_TOKEN, ' ').lower().split())


def question_prior_baseline(train_questions: Sequence[str], train_answers: Sequence[str],
                            eval_questions: Sequence[str], eval_answers: Sequence[str]) -> float:
    """Accuracy of a model that reads the question but not the image: the blind prior.

    Each evaluated question is answered with the most frequent training answer of the same question text
    (case and whitespace folded, ``<image>`` dropped; ties: alphabetically first), a question never seen in
    training with the overall training majority. On a balanced yes/no benchmark this is far above the
    majority baseline (easy-VQA: 0.67 against 0.37), and it is the number that image use must beat.

    Raises:
        ValueError: empty or misaligned inputs.
    """
    if not train_answers or len(train_questions) != len(train_answers) or len(eval_questions) != len(eval_answers):
        raise ValueError('question_prior_baseline needs aligned, non-empty question and answer lists.')
    counts: dict[str, Counter] = {}
    for q, a in zip(train_questions, train_answers):
        counts.setdefault(_question_key(q), Counter())[normalize_answer(a, 'exact')] += 1
    fallback, _ = majority_baseline(train_answers)
    hits = 0
    for q, a in zip(eval_questions, eval_answers):
        c = counts.get(_question_key(q))
        guess = min(c, key=lambda x: (-c[x], x)) if c else fallback
        hits += guess == normalize_answer(a, 'exact')
    return hits / len(eval_answers) if eval_answers else 0.0


# ------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class VQASample:
    """One question: ``prompt`` is the human turn as the data writes it (with ``<image>``), ``question`` the
    same without it, ``image`` the path as written (relative to the image folder), ``path`` the resolved file."""

    id: str
    image: str
    path: Path
    prompt: str
    question: str
    answer: str


def _read_records(path: Path) -> list[Any]:
    try:
        if path.suffix == '.jsonl':
            lines = path.read_text(encoding='utf-8').splitlines()
            return [json.loads(line) for line in lines if line.strip()]
        data = json.loads(path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as exc:
        raise ValueError(f'{path} is not valid JSON{"L" if path.suffix == ".jsonl" else ""} (line {exc.lineno}: '
                         f'{exc.msg}); give a LLaVA JSON list or a JSONL of samples.') from exc
    if not isinstance(data, list):
        raise ValueError(f'{path} holds a {type(data).__name__}; a LLaVA JSON file is a list of samples.')
    return data


def _parse_sample(record: Any, index: int, where: str, folder: Path) -> VQASample:
    if not isinstance(record, dict):
        raise ValueError(f'{where}: sample {index} is a {type(record).__name__}, not an object with "image" and '
                         '"conversations".')
    sid = str(record.get('id', index))
    name = f'{where}: sample {index} (id {sid!r})'
    image = record.get('image')
    if isinstance(image, list) and len(image) == 1:
        image = image[0]
    if not isinstance(image, str) or not image:
        raise ValueError(f'{name} has no single "image" (found {image!r}); VQA needs exactly one image per '
                         'question. Remove the sample or give it one image path.')
    conversations = record.get('conversations')
    if not isinstance(conversations, list) or not conversations:
        raise ValueError(f'{name} has no "conversations" list; write [{{"from": "human", "value": "<image>\\n'
                         'question"}, {"from": "gpt", "value": "answer"}].')
    first = conversations[0]
    if not isinstance(first, dict) or first.get('from') not in ('human', 'user') \
            or not isinstance(first.get('value'), str):
        raise ValueError(f'{name}: the first turn must be {{"from": "human", "value": "<image>\\n…"}}, found '
                         f'{first!r}.')
    prompt = first['value']
    if prompt.count(DEFAULT_IMAGE_TOKEN) != 1:
        raise ValueError(f'{name}: the question must hold exactly one {DEFAULT_IMAGE_TOKEN} (found '
                         f'{prompt.count(DEFAULT_IMAGE_TOKEN)}): {prompt!r}.')
    reply = conversations[1] if len(conversations) > 1 else None
    answer = reply.get('value') if isinstance(reply, dict) and reply.get('from') in ('gpt', 'assistant') else None
    if not isinstance(answer, str) or not answer_words(answer):
        raise ValueError(f'{name} has no gpt answer after its question (found {reply!r}); VQA scores the first '
                         'gpt turn: add {"from": "gpt", "value": "<answer>"}.')
    question = prompt.replace(DEFAULT_IMAGE_TOKEN, '').strip()
    return VQASample(id=sid, image=image, path=folder / image, prompt=prompt, question=question, answer=answer)


def load_vqa_samples(data_path: str | os.PathLike, image_folder: str | os.PathLike | None = None,
                     limit: int | None = None) -> list[VQASample]:
    """The questions of a LLaVA JSON (list) or JSONL file: the first human turn (one ``<image>``) and the gpt
    answer after it; later turns are ignored.

    Args:
        data_path: the file.
        image_folder: what the samples' ``image`` paths are relative to (default: the file's folder).
        limit: only the first ``limit`` samples, in file order (None: all).

    Raises:
        FileNotFoundError: no such file or image folder.
        ValueError: not JSON / not a list, a sample without one image, without a question holding one
            ``<image>`` or without a gpt answer (each naming the file, index and id), no image of the selected
            samples under ``image_folder`` (a folder mismatch), a missing image (naming the sample), a
            ``limit < 1``, or no samples.
    """
    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f'VQA data {str(path)!r} does not exist (a LLaVA JSON of questions and answers).')
    folder = Path(image_folder) if image_folder is not None else path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f'Image folder {str(folder)!r} does not exist; pass the folder the image paths of '
                                f'{path} are relative to.')
    if limit is not None and limit < 1:
        raise ValueError(f'limit must be >= 1 (or None for all samples), got {limit}.')
    records = _read_records(path)
    if limit is not None:
        records = records[:limit]
    samples = [_parse_sample(r, i, str(path), folder) for i, r in enumerate(records)]
    if not samples:
        raise ValueError(f'{path} holds no samples.')
    missing = [(i, s) for i, s in enumerate(samples) if not s.path.is_file()]
    if missing and len(missing) == len(samples):
        s = samples[0]
        raise ValueError(f'None of the {len(samples)} images of {path} exist under the image folder {folder} (sample '
                         f'0, id {s.id!r}: {s.path} is missing); pass the folder the JSON\'s "image" paths are '
                         'relative to (--image-folder).')
    if missing:
        i, s = missing[0]
        raise ValueError(f'{path}: sample {i} (id {s.id!r}): image {s.path} does not exist ({len(missing)} of '
                         f'{len(samples)} images missing under {folder}); fix or remove those samples.')
    return samples


def load_answers(data_path: str | os.PathLike) -> list[str]:
    """The first gpt answer of every sample of a LLaVA JSON/JSONL file that has one (images are not checked):
    the reference answers of a majority baseline taken from another split (e.g. the training set).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON / not a list, or no sample with an answer.
    """
    return [a for _, a in load_question_answers(data_path)]


def load_question_answers(data_path: str | os.PathLike) -> list[tuple[str, str]]:
    """``(first human turn, first gpt answer)`` of every sample of a LLaVA JSON/JSONL file that has both: the
    training statistics of :func:`majority_baseline` and :func:`question_prior_baseline`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON / not a list, or no sample with an answer.
    """
    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f'Baseline data {str(path)!r} does not exist (a LLaVA JSON whose answers give the '
                                'majority answer).')
    answers = []
    for record in _read_records(path):
        turns = record.get('conversations') if isinstance(record, dict) else None
        ask = next((t for t in turns or [] if isinstance(t, dict) and t.get('from') in ('human', 'user')), None)
        reply = next((t for t in turns or [] if isinstance(t, dict) and t.get('from') in ('gpt', 'assistant')), None)
        if reply is not None and isinstance(reply.get('value'), str) and answer_words(reply['value']):
            question = ask.get('value') if isinstance(ask, dict) and isinstance(ask.get('value'), str) else ''
            answers.append((question, reply['value']))
    if not answers:
        raise ValueError(f'{path} holds no sample with a gpt answer; it cannot give a majority baseline.')
    return answers


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ evaluator
class VQAEvaluator(ModelEvaluator):
    """Accuracy of each checkpoint's greedy one-word answers on a LLaVA VQA file, with the majority baseline.

    Args:
        data_path: the LLaVA JSON/JSONL of questions (:func:`load_vqa_samples`).
        image_folder: root of its image paths (default: the file's folder).
        image_processor: the training image processor (None: the model's own ``process_images``, e.g. an
            HF export's, which pads as training did).
        pad_to_square: pad images to a square before ``image_processor`` (the config's ``pad_image_to_square``).
        limit: only the first N questions (deterministic; None: all).
        batch_size: questions per generation batch.
        max_new_tokens: answer length cap (a one-word answer plus the stop token fits in a few).
        match: ``'first_word'`` (default) or ``'exact'`` (module docstring).
        system: system prompt (default: the template's).
        baseline_answers: answers the majority answer is taken from (e.g. the training set's; default: the
            evaluated answers), with ``baseline_source`` naming them in the settings.
        baseline_questions: the questions of ``baseline_answers``, aligned: the blind prior
            (:func:`question_prior_baseline`) is then reported as ``prior_accuracy``.

    Raises:
        ValueError / FileNotFoundError: bad data (:func:`load_vqa_samples`), ``batch_size`` or
            ``max_new_tokens`` < 1, an unknown ``match``.
    """

    name = 'vqa'
    results_format = VQA_RESULTS_FORMAT

    def __init__(self, data_path: str | os.PathLike, image_folder: str | os.PathLike | None = None, *,
                 image_processor: Any = None, pad_to_square: bool = True, limit: int | None = None,
                 batch_size: int = 8, max_new_tokens: int = 8, match: Match = 'first_word',
                 system: str | None = None, baseline_answers: Sequence[str] | None = None,
                 baseline_source: str | None = None, baseline_questions: Sequence[str] | None = None) -> None:
        super().__init__()
        _check_match(match)
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
        if max_new_tokens < 1:
            raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}.')
        self.data_path = Path(data_path)
        self.image_folder = Path(image_folder) if image_folder is not None else self.data_path.parent
        self.samples = load_vqa_samples(self.data_path, self.image_folder, limit)
        self.image_processor = image_processor
        self.pad_to_square = pad_to_square
        self.limit = limit
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.match: Match = match
        self.system = system
        answers = [s.answer for s in self.samples]
        self.baseline_source = baseline_source if baseline_answers is not None else 'evaluated answers'
        self.majority_answer, self.majority_accuracy = majority_baseline(
            list(baseline_answers) if baseline_answers is not None else answers, answers)
        self.prior_accuracy = None
        if baseline_questions is not None and baseline_answers is not None:
            self.prior_accuracy = question_prior_baseline(baseline_questions, baseline_answers,
                                                          [s.question for s in self.samples], answers)

    # ------------------------------------------------------------------ what is scored
    def settings(self) -> dict[str, Any]:
        return dict(data=str(self.data_path.resolve()), data_sha256=_file_sha256(self.data_path),
                    image_folder=str(self.image_folder.resolve()), limit=self.limit, num_samples=len(self.samples),
                    max_new_tokens=self.max_new_tokens, match=self.match, batch_size=self.batch_size,
                    system=self.system, pad_to_square=self.pad_to_square,
                    image_processor='model' if self.image_processor is None else type(self.image_processor).__name__,
                    baseline_source=self.baseline_source)

    def info(self) -> dict[str, Any]:
        return dict(samples=[[s.id, s.image, s.question, s.answer] for s in self.samples])

    def num_samples(self) -> int:
        return len(self.samples)

    def batches(self, model: 'MultimodalModel') -> Iterable[dict[str, Any]]:
        """Batches of ``batch_size`` questions in file order: ``{'indices', 'data'}`` (the model's batch)."""
        from ..data.image_loading import load_image

        for start in range(0, len(self.samples), self.batch_size):
            chunk = self.samples[start:start + self.batch_size]
            images = []
            for s in chunk:
                try:
                    images.append(load_image(s.path))
                except (ValueError, OSError) as exc:  # too large, unreadable
                    raise ValueError(f'{self.data_path}: sample id {s.id!r}: {exc}.') from exc
            data = build_chat_batch(model, images, [[{'from': 'human', 'value': s.prompt}] for s in chunk],
                                    image_processor=self.image_processor, pad_to_square=self.pad_to_square,
                                    system=self.system, sample_ids=[s.id for s in chunk])
            yield dict(indices=list(range(start, start + len(chunk))), data=data)

    def run_batch(self, model: 'MultimodalModel', data_batch: dict[str, Any]) -> Sequence[str]:
        ids = generate_answer_ids(model, data_batch['data'], max_new_tokens=self.max_new_tokens)
        return decode_answers(model, ids)

    # ------------------------------------------------------------------ process / compute_metrics
    def process(self, data_batch: Any, outputs: Sequence[str]) -> None:
        """Keep ``(sample index, prediction)`` per question."""
        self.results.extend(zip(data_batch['indices'], outputs))

    def compute_metrics(self, results: list) -> dict[str, Any]:
        """Accuracy, the majority baseline, the per-type / per-answer tables and the predictions (file order)."""
        by_index = dict(results)
        if sorted(by_index) != list(range(len(self.samples))):
            raise RuntimeError(f'VQAEvaluator got predictions for {len(by_index)} of {len(self.samples)} questions.')
        predictions = [by_index[i] for i in range(len(self.samples))]
        scores = vqa_accuracy(predictions, [s.answer for s in self.samples], [s.prompt for s in self.samples],
                              self.match)
        return dict(accuracy=scores['accuracy'], num_correct=scores['num_correct'],
                    num_samples=scores['num_samples'], majority_accuracy=self.majority_accuracy,
                    prior_accuracy=self.prior_accuracy,
                    majority_answer=self.majority_answer, match=self.match, per_type=scores['per_type'],
                    per_answer=scores['per_answer'], predictions=predictions)

    # ------------------------------------------------------------------ outputs
    def prediction_rows(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per question of a record: id, image, question, answer, prediction, its normalised form,
        correct, question type."""
        rows = []
        for s, pred in zip(self.samples, record['predictions']):
            rows.append(dict(id=s.id, image=s.image, question=s.question, answer=s.answer, prediction=pred,
                             normalized=normalize_answer(pred, record.get('match', self.match)),
                             correct=is_correct(pred, s.answer, record.get('match', self.match)),
                             type=question_type(s.prompt)))
        return rows

    def write_predictions(self, record: dict[str, Any], path: str | os.PathLike) -> Path:
        """The record's predictions as JSONL (:meth:`prediction_rows`), written atomically; returns the path."""
        from .runner import atomic_write_text
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in self.prediction_rows(record)))
        return path

    def write_answer_grid(self, record: dict[str, Any], path: str | os.PathLike, num: int = 8) -> Path:
        """A PNG of the first ``num`` questions: image, question, prediction and truth, titled green when
        correct and red when not (matplotlib, Agg); returns the path.

        Raises:
            ValueError: ``num < 1``.
        """
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        from ..data.image_loading import load_image

        if num < 1:
            raise ValueError(f'--show must be >= 1, got {num}.')
        rows = self.prediction_rows(record)[:num]
        cols = min(4, len(rows))
        nrows = -(-len(rows) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.8 * nrows), dpi=100, squeeze=False)
        for ax in axes.flat:
            ax.axis('off')
        for ax, row, s in zip(axes.flat, rows, self.samples):
            ax.imshow(load_image(s.path))
            mark, colour = ('✓', 'tab:green') if row['correct'] else ('✗', 'tab:red')
            pred = row['prediction'] if len(row['prediction']) <= 28 else row['prediction'][:27] + '…'
            question = '\n'.join(textwrap.wrap(s.question, 36)[:2])
            ax.set_title(f'{question}\n{mark} pred: {pred!r}\ntruth: {s.answer!r}', fontsize=8, color=colour)
        name = Path(record['checkpoint']).name
        fig.suptitle(f'{name}: accuracy {record["accuracy"]:.3f} (majority {record["majority_accuracy"]:.3f})')
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f'.{path.stem}.{os.getpid()}.tmp.png')
        try:
            fig.savefig(tmp)
            os.replace(tmp, path)
        finally:
            plt.close(fig)
            tmp.unlink(missing_ok=True)
        return path

    def write_csv(self, records: list[dict[str, Any]], path: str | os.PathLike) -> None:
        """``iteration,checkpoint,accuracy,num_correct,num_samples,majority_accuracy,type:<t>...,seconds``."""
        records = sorted_records(records)
        types = sorted({t for r in records for t in r['per_type']})
        with open(path, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['iteration', 'checkpoint', 'accuracy', 'num_correct', 'num_samples', 'majority_accuracy']
                            + [f'type:{t}' for t in types] + ['seconds'])
            for r in records:
                writer.writerow(['' if r.get('iteration') is None else r['iteration'], r['checkpoint'],
                                 f'{r["accuracy"]:.6f}', r['num_correct'], r['num_samples'],
                                 f'{r["majority_accuracy"]:.6f}']
                                + [f'{r["per_type"][t]["accuracy"]:.6f}' if t in r['per_type'] else '' for t in types]
                                + [f'{r.get("seconds", 0.0):.2f}'])

    def plot(self, records: list[dict[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
        """``vqa_curve.png``: accuracy and per-type accuracy against the iteration, the majority baseline dashed."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        records = sorted_records(records)
        xs = [r['iteration'] if r.get('iteration') is not None else i for i, r in enumerate(records)]
        fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
        ax.plot(xs, [r['accuracy'] for r in records], marker='o', linewidth=2, color='black', label='all')
        for t in sorted({t for r in records for t in r['per_type']}):
            ax.plot(xs, [r['per_type'].get(t, {}).get('accuracy', float('nan')) for r in records], marker='.',
                    alpha=0.7, label=t)
        ax.axhline(records[0]['majority_accuracy'], linestyle='--', color='grey',
                   label=f'majority ({records[0]["majority_answer"]!r})')
        if records[0].get('prior_accuracy') is not None:
            ax.axhline(records[0]['prior_accuracy'], linestyle=':', color='grey', label='blind prior (question only)')
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel('iteration')
        ax.set_ylabel(f'VQA accuracy ({records[0]["match"]} match)')
        ax.set_title(f'VQA accuracy (N={records[0]["num_samples"]})')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(out_dir) / 'vqa_curve.png'
        fig.savefig(path)
        plt.close(fig)
        return [path]

    def report(self, record: dict[str, Any]) -> Any:
        """Per-type table of one checkpoint."""
        from rich.table import Table
        table = Table(title=f'{Path(record["checkpoint"]).name}: VQA accuracy {record["accuracy"]:.4f} '
                            f'({record["num_correct"]}/{record["num_samples"]}; majority '
                            f'{record["majority_accuracy"]:.4f}, {record["seconds"]:.1f} s)')
        for col in ('question type', 'count', 'correct', 'accuracy'):
            table.add_column(col, justify='right')
        for t, row in record['per_type'].items():
            table.add_row(t, str(row['count']), str(row['correct']), f'{row["accuracy"]:.4f}')
        return table

    def summary_table(self, records: list[dict[str, Any]]) -> Any:
        from rich.table import Table
        records = sorted_records(records)
        types = sorted({t for r in records for t in r['per_type']})
        table = Table(title='VQA accuracy per checkpoint')
        for col in ('iteration', 'checkpoint', 'accuracy', 'correct', 'majority', 'blind prior', *types):
            table.add_column(col, justify='right')
        for r in records:
            prior = r.get('prior_accuracy')
            table.add_row('' if r.get('iteration') is None else str(r['iteration']), Path(r['checkpoint']).name,
                          f'{r["accuracy"]:.4f}', f'{r["num_correct"]}/{r["num_samples"]}',
                          f'{r["majority_accuracy"]:.4f}', '' if prior is None else f'{prior:.4f}',
                          *[f'{r["per_type"][t]["accuracy"]:.3f}' if t in r['per_type'] else '' for t in types])
        return table
