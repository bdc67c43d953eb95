"""Imports point one way: ``engine → align → models``, ``engine → models``; the library imports no test code.

Every ``mllm_align/**/*.py`` is parsed with ``ast``; every import counts, at module level, inside a function,
under ``if TYPE_CHECKING:`` or as ``importlib.import_module('mllm_align....')`` with a literal name. The
rules (:data:`FORBIDDEN`, by the first package below ``mllm_align``):

* ``models`` imports neither ``align``, ``engine`` nor ``evaluation``;
* ``align`` imports neither ``engine`` nor ``evaluation``;
* ``data`` and ``metrics`` import none of ``models``, ``align``, ``engine``, ``evaluation``;
* the root modules (``constants``, ``checkpoint_io``) import no sub-package;
* no library package imports ``testing`` (only tests, tools, benchmarks and tiny configs do).

A failure lists every offending ``file:line``, the import and the rule it breaks. Checkpoint loading that a
model needs is in ``mllm_align/checkpoint_io.py`` (below every package), not ``mllm_align.engine.checkpoint``.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'mllm_align'
SUBPACKAGES = ('models', 'align', 'data', 'metrics', 'engine', 'evaluation', 'testing', 'assets')
ROOT = '<root>'  # modules directly under mllm_align/ (constants.py, checkpoint_io.py, __init__.py)

FORBIDDEN: dict[str, frozenset[str]] = {
    'models': frozenset({'align', 'engine', 'evaluation', 'testing', 'assets'}),
    'align': frozenset({'engine', 'evaluation', 'testing', 'assets'}),
    'data': frozenset({'models', 'align', 'engine', 'evaluation', 'testing', 'assets'}),
    'metrics': frozenset({'models', 'align', 'engine', 'evaluation', 'testing', 'assets'}),
    'engine': frozenset({'testing', 'assets'}),
    'evaluation': frozenset({'testing', 'assets'}),
    'assets': frozenset({'align', 'engine', 'evaluation', 'testing'}),
    ROOT: frozenset(SUBPACKAGES),
}
WHY = {
    'align': 'models must not import plug-ins: plug-ins attach to a model through the AlignPlugin protocol',
    'engine': 'the engine sits above models/align; checkpoint loading is in mllm_align.checkpoint_io',
    'evaluation': 'the evaluation runner sits above models/align/data/metrics',
    'testing': 'library code must not import test code; inject faults through config hooks',
    'models': 'data and metrics sit below models',
    'assets': 'the one-off asset converters (data/prepare_real.py) sit beside the library; nothing in it needs them',
}


@dataclass(frozen=True)
class Violation:
    file: str  # relative to the scanned root's parent, e.g. mllm_align/models/export.py
    line: int
    importer: str  # the importing package (or ROOT)
    target: str  # the imported sub-package
    statement: str  # the import as written

    def __str__(self) -> str:
        reason = WHY.get(self.target, f'{self.importer} sits below {self.target}')
        return f'{self.file}:{self.line}: {self.statement}  ({self.importer} -> {self.target}: {reason})'


def _package_of(parts: tuple[str, ...]) -> str:
    """The first package below ``mllm_align`` of a module path (``('models', 'llava')`` → ``models``)."""
    return parts[0] if len(parts) > 1 else ROOT


def _resolve(module_parts: tuple[str, ...], is_package: bool, level: int, module: str | None) -> tuple[str, ...]:
    """The absolute dotted name (as parts, ``mllm_align`` first) of ``from <level dots><module> import``."""
    if level == 0:
        return tuple(module.split('.')) if module else ()
    base = (PACKAGE, *module_parts) if is_package else (PACKAGE, *module_parts[:-1])
    if level - 1 > len(base) - 1:
        return ()  # beyond the top package: Python itself refuses it
    base = base[:len(base) - (level - 1)]
    return base + tuple(module.split('.')) if module else base


def _targets(node: ast.AST, module_parts: tuple[str, ...], is_package: bool) -> list[tuple[str, str]]:
    """``[(sub-package, statement)]`` of the ``mllm_align`` sub-packages one AST node imports."""
    found: list[tuple[str, str]] = []

    def add(absolute: tuple[str, ...], names: list[str], text: str) -> None:
        if not absolute or absolute[0] != PACKAGE:
            return
        if len(absolute) > 1:
            found.append((absolute[1], text))
        else:  # `from mllm_align import engine` / `from .. import testing`
            found.extend((name, text) for name in names if name in SUBPACKAGES)

    if isinstance(node, ast.Import):
        for alias in node.names:
            add(tuple(alias.name.split('.')), [], f'import {alias.name}')
    elif isinstance(node, ast.ImportFrom):
        absolute = _resolve(module_parts, is_package, node.level, node.module)
        names = [alias.name for alias in node.names]
        add(absolute, names, f'from {"." * node.level}{node.module or ""} import {", ".join(names)}')
    elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', None)
        if name in ('import_module', '__import__'):
            add(tuple(node.args[0].value.split('.')), [], f'{name}({node.args[0].value!r})')
    return found


def find_violations(package_dir: Path) -> list[Violation]:
    """Every import in ``package_dir/**/*.py`` against :data:`FORBIDDEN`, in file and line order.

    Raises:
        SyntaxError: a file that does not parse (named by ``ast``).
    """
    violations = []
    for path in sorted(package_dir.rglob('*.py')):
        rel = path.relative_to(package_dir).with_suffix('')
        is_package = rel.name == '__init__'
        module_parts = rel.parts[:-1] if is_package else rel.parts
        importer = _package_of(rel.parts)
        forbidden = FORBIDDEN.get(importer, frozenset())
        tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
        for node in ast.walk(tree):
            for target, text in _targets(node, module_parts, is_package):
                if target in forbidden and target != importer:
                    violations.append(Violation(f'{package_dir.name}/{path.relative_to(package_dir)}',
                                                node.lineno, importer, target, text))
    return sorted(violations, key=lambda v: (v.file, v.line))


def test_library_imports_point_one_way():
    violations = find_violations(REPO / PACKAGE)
    if violations:
        pytest.fail(f'{len(violations)} import(s) against the layering (tests/test_layering.py docstring):\n'
                    + '\n'.join(f'  {v}' for v in violations), pytrace=False)


@pytest.fixture
def fake_package(tmp_path: Path) -> Path:
    """A tiny ``mllm_align`` tree with one import of each kind, allowed and forbidden."""
    root = tmp_path / PACKAGE
    files = {
        '__init__.py': '',
        'constants.py': 'X = 1\n',
        'checkpoint_io.py': 'from .constants import X\nfrom .engine import y\n',  # line 2: root -> engine
        'models/__init__.py': 'from .llava import M\n',
        'models/llava.py': ('from ..constants import X\n'
                            'from . import splice\n'
                            'def load():\n'
                            '    from ..engine.checkpoint import load_trained_weights\n'  # 4: inside a function
                            '    import mllm_align.align.moca\n'  # 5
                            'from mllm_align import testing, data\n'  # 6: testing only
                            'from ..checkpoint_io import load_trained_weights\n'),
        'models/sub/deep.py': 'from ...align import cal\nfrom ..llava import M\n',  # 1: three dots -> mllm_align
        'align/cal.py': ('from ..models.llava import M\n'
                         'import importlib\n'
                         "mod = importlib.import_module('mllm_align.engine.launch')\n"),  # 3
        'engine/launch.py': 'from ..align import cal\nfrom ..models import llava\nfrom ..testing import faults\n',
        'data/collate.py': 'from ..constants import X\nfrom ..metrics import mir\nfrom ..models.splice import s\n',
        'metrics/mir.py': 'import numpy\n',
        'testing/faults.py': 'from ..engine import launch\nfrom ..models import llava\n',
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_find_violations_catches_every_import_form(fake_package):
    found = [(v.file, v.line, v.target) for v in find_violations(fake_package)]
    assert found == [
        ('mllm_align/align/cal.py', 3, 'engine'),
        ('mllm_align/checkpoint_io.py', 2, 'engine'),
        ('mllm_align/data/collate.py', 3, 'models'),
        ('mllm_align/engine/launch.py', 3, 'testing'),
        ('mllm_align/models/llava.py', 4, 'engine'),
        ('mllm_align/models/llava.py', 5, 'align'),
        ('mllm_align/models/llava.py', 6, 'testing'),
        ('mllm_align/models/sub/deep.py', 1, 'align'),
    ]


def test_violation_names_file_line_statement_and_rule(fake_package):
    first = next(v for v in find_violations(fake_package) if v.file.endswith('models/llava.py'))
    assert str(first).startswith('mllm_align/models/llava.py:4: from ..engine.checkpoint import load_trained_weights')
    assert 'models -> engine' in str(first) and 'mllm_align.checkpoint_io' in str(first)
