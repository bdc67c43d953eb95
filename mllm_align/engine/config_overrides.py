"""``--cfg-options`` that are never silently ignored: PART 1 variables re-evaluate the config.

An mllm_align config builds its PART 2–5 dicts from PART 1 variables (``data_path``,
``template``, ``warmup_ratio``…). mmengine's ``merge_from_dict`` only replaces the top-level
name, so ``--cfg-options data_path=X`` would print the new value and train on the old data. Here:

* a key naming a PART 1 variable (a top-level name that is neither a runner key nor an imported
  class) **re-evaluates the config** with that variable's assignment replaced by the new value, in
  every file of the ``read_base()`` chain that assigns it (the given config, the recipe it
  inherits, ``_base_`` files). Every dict built from it, derived values included
  (``end=warmup_ratio * max_epochs``, ``persistent_workers=dataloader_num_workers > 0``), carries
  the new value. The rewritten files are parsed from a temporary mirror of the config tree, so
  relative ``read_base()`` imports resolve as in the repository;
* where that is impossible (a loaded ``Config`` object, a variable assigned inside a block or by
  tuple unpacking, a base imported by absolute module path, a value that is not a Python
  literal, or a dotted key into a PART 1 dict such as ``train_dataset.data_path``) the key is
  refused and the error lists the nested keys that hold its value;
* a nested key (``default_hooks.checkpoint.interval``) must lead through existing dicts and list
  items; a new key must be accepted by the component built from the dict that gets it, judged
  after all options are merged (:mod:`.config_checks`);
* any other key fails with the closest existing name;
* ``train_cfg.max_iters=N`` alone makes a :class:`~mllm_align.engine.loops.TrainLoop`'s
  ``max_epochs`` give way (set to None, with a warning), and ``train_cfg.max_epochs=N`` alone
  ``max_iters``.

:class:`CfgOptionsAction` is the argparse action of ``tools/train.py --cfg-options``: values parse
as mmengine's ``DictAction`` (ints, floats, booleans, ``None``, tuples, lists, strings), an item
without ``=`` is a usage error naming the item.
"""
from __future__ import annotations

import argparse
import ast
import copy
import difflib
import logging
import os
import os.path as osp
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from mmengine.config import Config, DictAction
from mmengine.logging import print_log

from .config_checks import RUNNER_KEYS, ConfigKeyError, accepted_keys_at, resolve_type, unknown_key_message


class CfgOptionsAction(DictAction):
    """``--cfg-options KEY=VALUE ...`` parsed like mmengine's ``DictAction``; an item without ``=`` is an error."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        for item in values or []:
            key, sep, _ = str(item).partition('=')
            if not sep or not key:
                parser.error(f'--cfg-options item {item!r} is not KEY=VALUE: write it as '
                             f'{key or item}=VALUE (e.g. model.freeze_llm=False, data_path=/data/x.json).')
        super().__call__(parser, namespace, values, option_string)


def part1_variables(cfg: Config) -> set[str]:
    """Top-level names of ``cfg`` that are settings: not runner keys, not imported classes/functions."""
    return {k for k, v in cfg.items() if k not in RUNNER_KEYS and not callable(v) and not k.startswith('_')}


def load_config(config: str | os.PathLike | Config, cfg_options: Mapping[str, Any] | None = None) -> Config:
    """Load ``config`` and apply ``cfg_options`` so that none is ignored (module docstring).

    Args:
        config: config file path, or an already loaded Config (PART 1 keys are then refused).
        cfg_options: ``{dotted key: value}`` as parsed by ``--cfg-options``.

    Returns:
        The config with every option applied.

    Raises:
        ConfigKeyError: an unknown key (with the closest match), a PART 1 key that cannot be
            re-evaluated (with the nested keys to use), a nested key the component rejects.
    """
    options = dict(cfg_options or {})
    cfg = config if isinstance(config, Config) else Config.fromfile(str(config))
    if not options:
        return cfg
    name = cfg.filename or '<in-memory config>'
    part1 = part1_variables(cfg)
    settings: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for key, value in options.items():
        root = str(key).split('.', 1)[0]
        if root in RUNNER_KEYS:
            nested[key] = value
        elif root in part1 and '.' not in key:
            settings[key] = value
        elif root in part1:
            raise ConfigKeyError(_refusal(cfg, key, f'{root!r} is a PART 1/2 variable of {name}: the runner '
                                                    'reads the dicts built from it, not the variable'))
        else:
            names = sorted(part1 | set(RUNNER_KEYS))
            close = difflib.get_close_matches(root, names, n=1, cutoff=0.6)
            hint = f' — did you mean {close[0]!r}?' if close else ''
            raise ConfigKeyError(f'--cfg-options {key}=...: {root!r} is neither a PART 1 variable nor a runner key '
                                 f'of {name}{hint} PART 1 variables: {", ".join(sorted(part1))}.')
    if settings:
        if isinstance(config, Config):
            key = next(iter(settings))
            raise ConfigKeyError(_refusal(cfg, key, 'the config was passed already loaded, so it cannot be '
                                                    're-evaluated; pass its file path to re-evaluate'))
        cfg = _reevaluate(str(config), settings, cfg)
        print_log(f'--cfg-options: re-evaluated {name} with PART 1 '
                  + ', '.join(f'{k}={v!r}' for k, v in settings.items()), logger='current')
    _loop_length_gives_way(cfg, nested)
    new_keys = {key: check_override_path(cfg, key) for key in nested}
    if nested:
        cfg.merge_from_dict(nested)
    for key, missing in new_keys.items():
        if missing is not None:
            check_new_key(cfg, key, *missing)
    return cfg


def check_override_path(cfg: Config, key: str) -> tuple[str, str] | None:
    """Raise :class:`ConfigKeyError` unless the dotted ``key`` leads through existing dicts and list items.

    Returns ``(parent path, name)`` of the first component that does not exist yet (None if the
    whole key exists, or it is a runner key the config does not set): whether that dict accepts
    it is decided by :func:`check_new_key` once every option is merged (an option may change the
    dict's ``type``).
    """
    name = cfg.filename or '<in-memory config>'
    node: Any = cfg
    path = ''
    for i, part in enumerate(key.split('.')):
        if isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigKeyError(f'--cfg-options {key}=...: {path} is a list of {len(node)} items in {name}; '
                                     f'index it with 0..{len(node) - 1} or replace it whole ({path}=[...]).')
            node = node[int(part)]
        elif isinstance(node, (Mapping, Config)):
            if part not in node:
                return None if i == 0 else (path, part)  # i == 0: a runner key not set yet (val_cfg…)
            node = node[part]
        else:
            raise ConfigKeyError(f'--cfg-options {key}=...: {path} is {node!r} in {name}, not a dict; '
                                 f'set {path}=... instead.')
        path = part if not path else f'{path}.{part}'
    return None


def check_new_key(cfg: Config, key: str, path: str, part: str) -> None:
    """Raise :class:`ConfigKeyError` unless the dict at ``path`` (merged config) accepts the new key ``part``."""
    name = cfg.filename or '<in-memory config>'
    node: Any = cfg
    for sub in path.split('.'):
        node = node[int(sub)] if isinstance(node, (list, tuple)) else node[sub]
    found = accepted_keys_at(path, node)
    if found is None:
        keys = {str(k) for k in node.keys()} - {part}
        close = difflib.get_close_matches(part, sorted(keys), n=1, cutoff=0.6)
        hint = f' — did you mean {close[0]!r}?' if close else ''
        raise ConfigKeyError(f'--cfg-options {key}=...: {path} has no key {part!r} in {name}{hint} '
                             f'Existing keys: {", ".join(sorted(keys))}.')
    keys, consumer = found
    if keys is not None and part not in keys:
        raise ConfigKeyError(unknown_key_message(name, path, part, keys, consumer))


def _loop_length_gives_way(cfg: Config, nested: dict[str, Any]) -> None:
    """``train_cfg.max_iters=N`` alone clears a TrainLoop's ``max_epochs`` (and the other way round)."""
    from .loops import TrainLoop
    loop = cfg.get('train_cfg')
    if not isinstance(loop, Mapping):
        return
    kind = resolve_type(loop.get('type'), 'train_cfg')
    if not (isinstance(kind, type) and issubclass(kind, TrainLoop)):
        return
    for given, other in (('max_iters', 'max_epochs'), ('max_epochs', 'max_iters')):
        if nested.get(f'train_cfg.{given}') is not None and f'train_cfg.{other}' not in nested \
                and loop.get(other) is not None:
            nested[f'train_cfg.{other}'] = None
            print_log(f'--cfg-options train_cfg.{given}={nested[f"train_cfg.{given}"]}: the config\'s '
                      f'train_cfg.{other}={loop[other]} gives way (set to None); TrainLoop takes one of them.',
                      logger='current', level=logging.WARNING)


def _usages(cfg: Config, variable: str) -> list[str]:
    """Dotted runner keys whose value equals PART 1 ``variable`` (derived values are not found)."""
    target = cfg.get(variable)
    found: list[str] = []

    def visit(value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                visit(v, f'{path}.{k}')
        elif isinstance(value, (list, tuple)) and not (isinstance(target, (list, tuple)) and value == target):
            for i, v in enumerate(value):
                visit(v, f'{path}.{i}')
        if path and _same(value, target):
            found.append(path)

    for key in RUNNER_KEYS:
        if key in cfg:
            visit(cfg[key], key)
    return found


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return dict(a) == dict(b)
    return type(a) is type(b) and a == b


def _refusal(cfg: Config, key: str, reason: str) -> str:
    root, _, rest = key.partition('.')
    uses = _usages(cfg, root)
    if uses:
        keys = ', '.join(f'{u}.{rest}' if rest else u for u in uses)
        where = f'Set the nested keys instead: {keys} (the keys holding its value; derived values are not listed).'
    else:
        where = 'No runner key holds its value directly; override the nested keys built from it.'
    return f'--cfg-options {key}=... would be ignored: {reason}. {where}'


# ----------------------------------------------------------------------------------------------------
# Re-evaluation: the config chain with PART 1 assignments replaced
# ----------------------------------------------------------------------------------------------------
def _read_base_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(level, module) of each ``from ... import`` inside ``with read_base():`` at module level."""
    found = []
    for stmt in tree.body:
        if isinstance(stmt, ast.With) and any(
                isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, 'id', None) == 'read_base'
                for item in stmt.items):
            for sub in stmt.body:
                if isinstance(sub, ast.ImportFrom):
                    found.append((sub.level, sub.module or ''))
    return found


def _config_chain(path: str) -> tuple[list[str], list[str]]:
    """Files of the ``read_base()`` chain of ``path``: (relatively imported incl. ``path``, absolute ones)."""
    relative: list[str] = []
    absolute: list[str] = []
    todo = [osp.abspath(path)]
    while todo:
        current = todo.pop()
        if current in relative:
            continue
        relative.append(current)
        with open(current, encoding='utf-8') as f:
            tree = ast.parse(f.read(), filename=current)
        for level, module in _read_base_imports(tree):
            if level > 0:
                base = osp.join(osp.dirname(current), *(['..'] * (level - 1)), module.replace('.', '/') + '.py')
                todo.append(osp.normpath(base))
            else:
                absolute.append(module)
    return relative, absolute


def _literal(variable: str, value: Any, key_file: str) -> ast.expr:
    """``value`` as an AST expression; refuses what is not a Python literal."""
    if isinstance(value, Mapping):
        value = {k: v for k, v in value.items()}
    text = repr(value)
    try:
        back = ast.literal_eval(text)
        ok = back == value and type(back) is type(value)
    except (ValueError, SyntaxError):
        ok = False
    if not ok:
        raise ConfigKeyError(f'--cfg-options {variable}=...: {value!r} is not a literal value that can be '
                             f'written into {key_file}; give a number, string, bool, None, list or tuple.')
    return ast.parse(text, mode='eval').body


class _Substitute:
    """Replace module-level assignments of the names in ``values`` by ``name = <new value>``; note the rest."""

    def __init__(self, values: dict[str, ast.expr]) -> None:
        self.values = values
        self.replaced: dict[str, int] = {k: 0 for k in values}
        self.nested: set[str] = set()

    def rewrite(self, tree: ast.Module) -> ast.Module:
        body = []
        for stmt in tree.body:
            target = self._single_target(stmt)
            if target in self.values:
                value = copy.deepcopy(self.values[target])  # one node per assignment
                body.append(ast.copy_location(ast.Assign(targets=[ast.Name(id=target, ctx=ast.Store())],
                                                         value=value), stmt))
                self.replaced[target] += 1
                continue
            for node in ast.walk(stmt):  # assigned anywhere else (tuple targets, blocks, walrus)
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id in self.values:
                    self.nested.add(node.id)
            body.append(stmt)
        tree.body = body
        return ast.fix_missing_locations(tree)

    @staticmethod
    def _single_target(stmt: ast.stmt) -> str | None:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            return stmt.targets[0].id
        if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) and isinstance(stmt.target, ast.Name):
            return stmt.target.id
        return None


def _reevaluate(path: str, settings: dict[str, Any], loaded: Config) -> Config:
    """Parse ``path`` again with each PART 1 variable in ``settings`` assigned its new value."""
    files, absolute = _config_chain(path)
    values = {k: _literal(k, v, path) for k, v in settings.items()}
    substitute = _Substitute(values)
    rewritten: dict[str, str] = {}
    for file in files:
        with open(file, encoding='utf-8') as f:
            text = f.read()
        tree = ast.parse(text, filename=file)
        if any(isinstance(s, ast.Assign) and any(getattr(t, 'id', None) == '_base_' for t in s.targets)
               for s in tree.body):
            raise ConfigKeyError(_refusal(loaded, next(iter(settings)),
                                          f'{file} uses `_base_ = [...]` inheritance, which is not re-evaluated'))
        before = dict(substitute.replaced)
        tree = substitute.rewrite(tree)
        rewritten[file] = ast.unparse(tree) if substitute.replaced != before else text
    for variable in settings:
        if variable in substitute.nested:
            raise ConfigKeyError(_refusal(loaded, variable, f'{variable!r} is also assigned inside a block or by '
                                                            'unpacking in its config chain'))
        if not substitute.replaced[variable]:
            where = f' (bases imported by module path: {", ".join(absolute)})' if absolute else ''
            raise ConfigKeyError(_refusal(loaded, variable, f'no file of the config chain of {path} assigns '
                                                            f'{variable!r} at module level{where}'))
    root = osp.commonpath([osp.dirname(f) for f in files])
    mirror = tempfile.mkdtemp(prefix='mllm_align_cfg_')
    try:
        for file, text in rewritten.items():
            target = osp.join(mirror, osp.relpath(file, root))
            os.makedirs(osp.dirname(target), exist_ok=True)
            with open(target, 'w', encoding='utf-8') as f:
                f.write(text)
        cfg = Config.fromfile(osp.join(mirror, osp.relpath(osp.abspath(path), root)))
    finally:
        shutil.rmtree(mirror, ignore_errors=True)
    # The runner names work dirs and logs after the file: keep the user's path, not the mirror's.
    object.__setattr__(cfg, '_filename', path)
    return cfg
