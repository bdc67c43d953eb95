"""Evaluation: score a work dir's checkpoints (or one checkpoint, or an HF export) with evaluators.

:func:`evaluate_checkpoints` finds the checkpoints, builds the base model once, swaps each checkpoint's
trained weights in, skips what is already scored with the same settings, and writes JSON, CSV and plots
atomically. Evaluators (:class:`ModelEvaluator`) keep mmengine's ``process`` / ``compute_metrics`` split;
:class:`MIREvaluator` is the first. Library code here takes built objects; reading a config is the
caller's (``mllm_align/engine/mir_eval.py``, ``tools/eval_mir.py``).
"""
from .checkpoints import CheckpointRef, discover_checkpoints, load_trained_state
from .evaluator import ModelEvaluator, sorted_records
from .mir import MIR_RESULTS_FORMAT, MIREvaluator
from .runner import SettingsMismatch, evaluate_checkpoints, load_results

__all__ = ['CheckpointRef', 'MIREvaluator', 'MIR_RESULTS_FORMAT', 'ModelEvaluator', 'SettingsMismatch',
           'discover_checkpoints', 'evaluate_checkpoints', 'load_results', 'load_trained_state', 'sorted_records']
from .chat import ChatSession, answer_batch  # noqa: E402
from .vqa import (  # noqa: E402
    VQA_RESULTS_FORMAT,
    VQAEvaluator,
    load_vqa_samples,
    majority_baseline,
    normalize_answer,
    question_type,
    vqa_accuracy,
)

__all__ += ['ChatSession', 'VQAEvaluator', 'VQA_RESULTS_FORMAT', 'answer_batch', 'load_vqa_samples',
            'majority_baseline', 'normalize_answer', 'question_type', 'vqa_accuracy']
from .a_score import A_SCORE_RESULTS_FORMAT, AScoreEvaluator  # noqa: E402
from .c_score import CScoreResult, c_score  # noqa: E402

__all__ += ['A_SCORE_RESULTS_FORMAT', 'AScoreEvaluator', 'CScoreResult', 'c_score']
