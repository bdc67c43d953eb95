"""What every HF export of a base shares: the export-info file, plug-in files, an atomically committed directory.

An export is written into a temporary sibling of ``out_dir`` and renamed into place only when complete
(:func:`staged_export_dir`), so a crash never leaves a half-written model where a loader would read it.
Each plug-in writes what inference needs through the protocol (``AlignPlugin.export_files``) and is
recorded in :data:`EXPORT_INFO_NAME` as ``{"name", "class", "files"}``, which the HF-directory loaders
(``hf_llava.attach_exported_plugins``) read back.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .base import MultimodalModel

__all__ = ['EXPORT_INFO_NAME', 'apply_umask', 'check_plugins_exportable', 'export_plugins', 'plugin_label',
           'prepare_out_dir', 'staged_export_dir']

#: Written into every export directory: source, settings, template, plug-ins.
EXPORT_INFO_NAME = 'mllm_align_export.json'


def plugin_label(name: str, plugin: Any) -> str:
    """``model.plugins.<name> (<Class>(<extra_repr>))`` for messages."""
    extra = plugin.extra_repr() if hasattr(plugin, 'extra_repr') else ''
    return f'model.plugins.{name} ({type(plugin).__name__}({extra}))'


def check_plugins_exportable(model: 'MultimodalModel', target: str) -> None:
    """Raise ``ValueError`` naming the first plug-in with ``exportable = False`` (``target``: the HF class)."""
    for name, plugin in model.plugins.items():
        if not getattr(plugin, 'exportable', True):
            raise ValueError(f'{plugin_label(name, plugin)} cannot be exported: it changes what the model computes '
                             f'and {target} cannot compute that. Evaluate this model with mllm_align instead '
                             '(e.g. tools/eval_mir.py --config).')


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Check ``out_dir`` may receive an export: absent, empty, or (with ``overwrite``) a previous export.

    Raises:
        FileExistsError: a file; a non-empty directory without ``overwrite``; a non-empty directory that
            holds no :data:`EXPORT_INFO_NAME` (not an export: never replaced).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f'Output path {str(out_dir)!r} exists and is not a directory.')
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f'Output directory {str(out_dir)!r} is not empty: choose a new directory or '
                                  'pass overwrite=True (--overwrite) to replace a previous export.')
        if not (out_dir / EXPORT_INFO_NAME).is_file():
            raise FileExistsError(f'Refusing to overwrite {str(out_dir)!r}: it is not empty and holds no '
                                  f'{EXPORT_INFO_NAME}, so it is not a previous export. Remove it yourself or '
                                  'choose another directory.')


def export_plugins(model: 'MultimodalModel', out_dir: Path) -> list[dict[str, Any]]:
    """Each plug-in's ``export_files`` into ``out_dir``, in order: ``[{name, class, files}]`` for the export info.

    Raises:
        RuntimeError: a plug-in reported a file it did not write.
    """
    entries = []
    for name, plugin in model.plugins.items():
        files = list(plugin.export_files(model, out_dir))
        missing = [f for f in files if not (out_dir / f).is_file()]
        if missing:
            raise RuntimeError(f'{plugin_label(name, plugin)}.export_files reported {missing}, which it did not '
                               f'write into {out_dir}.')
        cls = type(plugin)
        entries.append(dict(name=name, **{'class': f'{cls.__module__}.{cls.__qualname__}'}, files=files))
    return entries


def apply_umask(directory: Path) -> None:
    """Give ``directory``, its sub-directories and files the modes the umask allows.

    ``tempfile.mkdtemp`` (and some writers) create private (0700 / 0600) entries; a directory renamed into
    place from a temporary one should look as if it had been written in place.
    """
    mask = os.umask(0)
    os.umask(mask)
    for root, dirs, files in os.walk(directory):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextlib.contextmanager
def staged_export_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` to write into; on success it replaces ``out_dir`` (a previous
    export there is removed first), on any error it is deleted and ``out_dir`` is left as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f'.{out_dir.name}.', suffix='.tmp'))
    try:
        yield tmp_dir
        apply_umask(tmp_dir)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
