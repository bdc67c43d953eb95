"""Load a ``tools/*.py`` script as a module (its ``main(argv)``), for tests that run a tool in-process."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

__all__ = ['load_tool']

REPO = Path(__file__).resolve().parents[2]


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` imported under the module name ``<name>_tool``."""
    spec = importlib.util.spec_from_file_location(f'{name}_tool', REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
