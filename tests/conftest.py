"""Shared fixtures: the tiny offline assets (built once into data/tiny/) and mmengine hygiene."""
from __future__ import annotations

from pathlib import Path

import pytest

from mllm_align.testing.net import free_port as find_free_port

REPO = Path(__file__).resolve().parents[1]
TINY_ROOT = REPO / 'data' / 'tiny'


@pytest.fixture(scope='session')
def tiny_assets():
    """Tiny LLaMA/Qwen2/CLIP/SigLIP/DINOv2 + the shapes dataset, at data/tiny (what the tiny configs use)."""
    from mllm_align.testing.tiny_assets import build_tiny_assets
    return build_tiny_assets(TINY_ROOT)


@pytest.fixture()
def free_port() -> int:
    return find_free_port()


@pytest.fixture(autouse=True)
def _no_leaked_mllm_align_env():
    """Fail a test that leaves an ``MLLM_ALIGN_*`` variable changed (and restore it).

    These variables switch safety and fault injection (``MLLM_ALIGN_TRUST_CHECKPOINT``,
    ``MLLM_ALIGN_LAUNCHER_PID``, ``MLLM_ALIGN_CRASH_*``); a leaked one silently changes every later
    test and every subprocess it starts.
    """
    import os
    before = {k: v for k, v in os.environ.items() if k.startswith('MLLM_ALIGN_')}
    yield
    after = {k: v for k, v in os.environ.items() if k.startswith('MLLM_ALIGN_')}
    if after != before:
        for key in set(after) - set(before):
            del os.environ[key]
        os.environ.update(before)
        pytest.fail(f'the test changed MLLM_ALIGN_* environment variables: {before} -> {after}; '
                    'use monkeypatch.setenv/delenv so they are restored')


@pytest.fixture(autouse=True)
def _clear_mmengine_singletons():
    """mmengine keeps global MessageHub/MMLogger/Visualizer instances; clear them between tests."""
    yield
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.visualization import Visualizer
    for cls in (MessageHub, MMLogger, DefaultScope, Visualizer):
        cls._instance_dict.clear()
