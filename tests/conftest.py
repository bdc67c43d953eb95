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
def _clear_mmengine_singletons():
    """mmengine keeps global MessageHub/MMLogger/Visualizer instances; clear them between tests."""
    yield
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.visualization import Visualizer
    for cls in (MessageHub, MMLogger, DefaultScope, Visualizer):
        cls._instance_dict.clear()
