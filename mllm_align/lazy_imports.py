"""Start-up: keep ``deepspeed`` out of runs that do not use it (imports the standard library only).

``mmengine.runner`` always imports ``mmengine._strategy`` (through ``FlexibleRunner``), whose
``deepspeed.py`` runs ``try: import deepspeed / except ImportError: deepspeed = None`` at module level.
Where DeepSpeed is installed that import costs ~0.3 s on a 2-core CPU (its accelerator probe and
``deepspeed.module_inject``, ``deepspeed.runtime.zero``...) and a warning line, in every run, also
the DDP / single-process ones that never build a ``DeepSpeedStrategy``. mmengine's own package layout
gives no way around it: ``mmengine.runner/__init__.py`` imports ``FlexibleRunner`` first, and every
``mmengine.runner.*`` submodule (``Runner``, ``CheckpointLoader``) runs that ``__init__``.

:func:`defer_mmengine_deepspeed_import` installs a one-shot meta-path finder that answers exactly that
import statement — ``import deepspeed`` executed by the module-level code of
``mmengine._strategy.deepspeed`` — with ``ImportError``, so mmengine binds ``deepspeed = None`` as on a
machine without DeepSpeed; it then removes itself. Chosen over the alternatives because it is narrow:

* any other importer still gets the real package: ``importlib.util.find_spec('deepspeed')`` (how
  transformers and :func:`mllm_align.engine.launch._to_deepspeed` check that DeepSpeed is installed) finds
  it; ``tools/check_zero3.py``, the tests and mmengine's ``init_dist`` import it as usual;
* putting ``None`` in ``sys.modules['deepspeed']`` around the first ``import mmengine.runner`` would also
  hide DeepSpeed from transformers, which imports inside that window and caches ``is_deepspeed_available()``;
* a lazy module (``importlib.util.LazyLoader``) in ``sys.modules`` would be imported by the first
  ``hasattr`` of any library probing ``sys.modules``.

A run that asks for DeepSpeed does not install it (``tools/train.py`` checks its command line with
:func:`argv_asks_for_deepspeed`), and :func:`bind_deepspeed_into_mmengine` — called by
:mod:`mllm_align.engine.ds_strategy`, which every ``DeepSpeedStrategy`` run imports — imports DeepSpeed and
gives mmengine's module its ``deepspeed`` global back, so a DeepSpeed strategy works in a process that
deferred the import too (a test that loaded ``tools/train.py`` first).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Sequence

MMENGINE_DEEPSPEED_MODULE = 'mmengine._strategy.deepspeed'
DEEPSPEED_OPTION = '--deepspeed'


class _DeferMmengineDeepSpeed(importlib.abc.MetaPathFinder):
    """Raises ``ImportError`` for the module-level ``import deepspeed`` of mmengine's strategy, once."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != 'deepspeed':
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get('__name__', '').startswith('importlib'):
            frame = frame.f_back  # the import machinery's own frames
        if (frame is None or frame.f_globals.get('__name__') != MMENGINE_DEEPSPEED_MODULE
                or frame.f_code.co_name != '<module>'):
            return None
        _uninstall()
        raise ModuleNotFoundError(f'deepspeed deferred: this run does not use DeepSpeed ({__name__}); a run '
                                  f'with {DEEPSPEED_OPTION} imports it', name='deepspeed')


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _DeferMmengineDeepSpeed)]


def defer_mmengine_deepspeed_import() -> bool:
    """Make mmengine's strategy module skip ``import deepspeed`` (module docstring). Returns whether it will.

    Does nothing (False) when that module or deepspeed is already imported; idempotent.
    """
    if MMENGINE_DEEPSPEED_MODULE in sys.modules or 'deepspeed' in sys.modules:
        return False
    if not any(isinstance(f, _DeferMmengineDeepSpeed) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeferMmengineDeepSpeed())
    return True


def bind_deepspeed_into_mmengine() -> None:
    """Import deepspeed and set it as ``mmengine._strategy.deepspeed.deepspeed`` where the import was deferred.

    Where DeepSpeed is not installed mmengine's ``deepspeed`` stays ``None``, as without the deferral.
    """
    _uninstall()
    module = importlib.import_module(MMENGINE_DEEPSPEED_MODULE)
    if module.deepspeed is None and importlib.util.find_spec('deepspeed') is not None:
        module.deepspeed = importlib.import_module('deepspeed')


def argv_asks_for_deepspeed(argv: Sequence[str]) -> bool:
    """Whether a ``tools/train.py`` command line has ``--deepspeed`` (or a prefix argparse accepts: ``--deep``).

    Read before the parser exists (the parser's modules import mmengine.runner). A false positive only
    costs the deferral; a false negative is repaired by :func:`bind_deepspeed_into_mmengine`.
    """
    for arg in argv:
        if arg == '--':
            break
        option = arg.split('=', 1)[0]
        if len(option) > 2 and DEEPSPEED_OPTION.startswith(option):
            return True
    return False
