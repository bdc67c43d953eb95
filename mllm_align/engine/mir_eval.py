"""Score saved checkpoints with MIR: one ``iter_N.pth``, a work dir's whole series, or an HF Llava export.

What :func:`evaluate_mir` does (``tools/eval_mir.py`` is its command line)::

    target ──► checkpoints (iter_*.pth sorted by N | one .pth | an HF Llava directory)
    config ──► base model, built ONCE ──► per checkpoint: load its trained weights (strict) ──►
               compute_model_mir (2 streaming passes over the probe) ──► mir.json (after each)
    all results ──► mir.csv, mir_curve.png (MIR vs iteration), mir_layers.png (D_k per layer)

Only the trained weights change between iterations (``iter_N.pth`` holds the ``requires_grad``
parameters: projector, LoRA, plug-ins); they are loaded with every trained key required, and a
checkpoint lacking a key that an earlier one set is an error, so no stale weight survives a swap.

Re-running is cheap: ``mir.json`` keeps one record per checkpoint, keyed by its resolved path, size
and mtime, under one ``settings`` block (probe fingerprint, sources, N, layers, sqrt, text tokens,
prompt settings, dtype, config hash). A checkpoint whose key matches is skipped; a changed file is
recomputed; different settings raise :class:`MIRSettingsMismatch` naming them (``overwrite=True``
discards the old results instead).

Defaults for the probe (see ``mllm_align/data/mir_probe.py``): images = the config's train dataset
(``data_path`` + ``image_folder``, the distinct images of the training JSON); texts = the committed
``data/mir_texts`` paragraphs. The seed's setting is 100 TextVQA images with CNN/DM stories:
pass ``--images``/``--texts`` for numbers comparable with the paper.
"""
from __future__ import annotations

import csv
import datetime
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from mmengine.logging import print_log

from ..data.mir_probe import DEFAULT_TEXT_MAX_TOKENS, build_mir_probe
from ..metrics.mir import SQRT_MODES, MIRResult
from ..models.hidden_states import TEXT_TOKENS, HFLlavaModel, compute_model_mir, num_llm_layers, parse_layers
from .checkpoint import is_deepspeed_checkpoint, load_checkpoint_file

__all__ = ['CheckpointRef', 'MIRSettingsMismatch', 'RESULTS_FORMAT', 'discover_checkpoints', 'evaluate_mir',
           'default_probe_sources', 'load_results', 'plot_results', 'write_csv']

RESULTS_FORMAT = 'mllm_align.mir_eval/1'
_ITER_RE = re.compile(r'^iter_(\d+)\.pth$')


class MIRSettingsMismatch(ValueError):
    """``mir.json`` in the output folder was computed with other settings."""


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointRef:
    """One thing to score: an ``iter_N.pth`` (``kind='pth'``) or an HF Llava directory (``kind='hf'``)."""

    path: Path
    iteration: int | None
    kind: str = 'pth'

    @property
    def name(self) -> str:
        return self.path.name

    def key(self) -> dict[str, Any]:
        """Resolved path, size and mtime (for an HF directory: over its files)."""
        path = self.path.resolve()
        if self.kind == 'hf':
            files = [p for p in path.iterdir() if p.is_file()]
            stats = [p.stat() for p in files]
            return dict(path=str(path), size=sum(s.st_size for s in stats),
                        mtime_ns=max((s.st_mtime_ns for s in stats), default=0))
        st = path.stat()
        return dict(path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns)


def _is_hf_llava_dir(path: Path) -> bool:
    config = path / 'config.json'
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get('model_type') == 'llava'
    except (OSError, json.JSONDecodeError):
        return False


def discover_checkpoints(target: str | os.PathLike) -> list[CheckpointRef]:
    """The checkpoints ``target`` names, in iteration order.

    Args:
        target: a work dir (its ``iter_*.pth``, sorted by N; other files ignored), one ``.pth`` file,
            or an HF Llava directory (``config.json`` with ``model_type: llava``).

    Raises:
        FileNotFoundError: ``target`` does not exist.
        ValueError: a work dir without ``iter_*.pth``, or a file that is not ``.pth``.
    """
    path = Path(target)
    if not path.exists():
        raise FileNotFoundError(f'{str(path)!r} does not exist: give a work dir of iter_*.pth files, one .pth '
                                'checkpoint or an HF Llava directory.')
    if path.is_dir() and not is_deepspeed_checkpoint(path):
        if _is_hf_llava_dir(path):
            return [CheckpointRef(path, None, 'hf')]
        found = [(int(m.group(1)), p) for p in path.iterdir()
                 if (m := _ITER_RE.match(p.name)) and (p.is_file() or is_deepspeed_checkpoint(p))]
        if not found:
            raise ValueError(f'{path} holds no iter_*.pth checkpoint (and is not an HF Llava directory); '
                             'train with default_hooks.checkpoint saving every few iterations first.')
        return [CheckpointRef(p, n) for n, p in sorted(found)]
    if path.suffix != '.pth':
        raise ValueError(f'{path} is not a .pth checkpoint, a work dir or an HF Llava directory.')
    m = _ITER_RE.match(path.name)
    return [CheckpointRef(path, int(m.group(1)) if m else None)]


def _load_trained(model: torch.nn.Module, ref: CheckpointRef, config: str, seen_keys: set[str]) -> int | None:
    """Load ``ref``'s trained weights into ``model``; returns the iteration from the checkpoint meta."""
    ckpt = load_checkpoint_file(ref.path)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f'Checkpoint {ref.path} holds no weights (no `state_dict`).')
    trainable = model.trainable_names() if hasattr(model, 'trainable_names') else set(state)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        detail = ' '.join(str(exc).split()).rstrip('.')  # torch's message spans several lines
        raise ValueError(f'Checkpoint {ref.path} does not match the model built from {config}: {detail}. '
                         'Pass the config the run was trained with.') from exc
    unexpected = list(result.unexpected_keys)
    missing = sorted(trainable - set(state))
    if unexpected or missing:
        raise ValueError(f'Checkpoint {ref.path} does not match the model built from {config}: keys the model '
                         f'does not have {unexpected[:5]}, trained keys missing from the checkpoint {missing[:5]}. '
                         'Pass the config the run was trained with.')
    stale = sorted(seen_keys - set(state))
    if stale:
        raise ValueError(f'Checkpoint {ref.path} lacks {stale[:5]}, which an earlier checkpoint of the series set; '
                         'score it in a separate call so that no weight from another checkpoint remains.')
    seen_keys.update(state)
    return int(meta['iter']) if isinstance(meta, dict) and isinstance(meta.get('iter'), int) else None


# ---------------------------------------------------------------------------------------------
# Settings and results file
# ---------------------------------------------------------------------------------------------
def default_probe_sources(cfg: Any) -> tuple[str, str | None]:
    """``(images, image_folder)`` from a config's train dataset (``data_path``, ``image_folder``).

    Raises:
        ValueError: the config has no train dataset with a ``data_path``.
    """
    dataset = ((cfg.get('train_dataloader') or {}).get('dataset') or {})
    if 'datasets' in dataset:  # a concatenation: its first part
        dataset = (dataset['datasets'] or [{}])[0]
    data_path = dataset.get('data_path')
    if not data_path:
        raise ValueError(f'Config {getattr(cfg, "filename", "")} has no train_dataloader.dataset.data_path to take '
                         'probe images from; pass --images (a folder of images or a LLaVA JSON).')
    folder = dataset.get('image_folder')
    return str(data_path), None if folder is None else str(folder)


def _canonical_layers(layers: Any) -> str:
    if layers is None or (isinstance(layers, str) and layers.strip().lower() == 'all'):
        return 'all'
    return ','.join(str(n) for n in parse_layers(layers, 1 << 30))


def _sha256_file(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_results(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The content of ``out_dir/mir.json``, or None if absent.

    Raises:
        ValueError: the file is not a mir_eval results file.
    """
    path = Path(out_dir) / 'mir.json'
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f'{path} is not valid JSON ({exc.msg}); delete it or pass --overwrite.') from exc
    if not isinstance(data, dict) or data.get('format') != RESULTS_FORMAT:
        raise ValueError(f'{path} is not an eval_mir results file (format {RESULTS_FORMAT}); use another --out.')
    return data


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def _settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f'{k}: {old.get(k)!r} → {new.get(k)!r}' for k in keys if old.get(k) != new.get(k)]


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------
def _sorted_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (r['iteration'] is None, r['iteration'] or 0, r['checkpoint']))


def write_csv(records: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """``iteration,checkpoint,mir,num_layers,mir_bound,num_pairs,sqrt,text_tokens,seconds,layer_<k>...``."""
    records = _sorted_records(records)
    layer_cols = sorted({k for r in records for k in r['layers']})
    fields = ['iteration', 'checkpoint', 'mir', 'num_layers', 'mir_bound', 'num_pairs', 'sqrt', 'text_tokens',
              'seconds'] + [f'layer_{k}' for k in layer_cols]
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in records:
            per = dict(zip(r['layers'], r['per_layer']))
            writer.writerow([r['iteration'] if r['iteration'] is not None else '', r['checkpoint'],
                             f'{r["mir"]:.6f}', len(r['layers']), f'{r["mir_bound"]:.3g}', r['num_pairs'],
                             r['sqrt'], r['text_tokens'], f'{r["seconds"]:.2f}']
                            + [f'{per[k]:.6g}' if k in per else '' for k in layer_cols])


def plot_results(records: list[dict[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
    """``mir_curve.png`` (MIR vs iteration) and ``mir_layers.png`` (D_k vs layer, one line per checkpoint)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    records = _sorted_records(records)
    xs = [r['iteration'] if r['iteration'] is not None else i for i, r in enumerate(records)]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(xs, [r['mir'] for r in records], marker='o')
    ax.set_xlabel('iteration')
    ax.set_ylabel('MIR = log10 Σ_k D_k (lower = better aligned)')
    ax.set_title(f'MIR over training (N={records[0]["num_pairs"]}, sqrt={records[0]["sqrt"]})' if records else 'MIR')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / 'mir_curve.png')
    fig.savefig(paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    cmap = plt.get_cmap('viridis')
    positive = all(d > 0 for r in records for d in r['per_layer'])
    for i, r in enumerate(records):
        label = f'iter {r["iteration"]}' if r['iteration'] is not None else Path(r['checkpoint']).name
        ax.plot(r['layers'], r['per_layer'], marker='.', color=cmap(i / max(1, len(records) - 1)), label=label)
    if positive:
        ax.set_yscale('log')
    ax.set_xlabel('LLM layer k')
    ax.set_ylabel('D_k (per-layer Fréchet distance)')
    ax.set_title('Per-layer modality gap')
    ax.grid(alpha=0.3)
    if len(records) <= 12:
        ax.legend(fontsize=7)
    else:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(min(xs), max(xs)))
        fig.colorbar(sm, ax=ax, label='iteration')
    fig.tight_layout()
    paths.append(out_dir / 'mir_layers.png')
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


def _layer_table(record: dict[str, Any], result: MIRResult) -> Any:
    from rich.table import Table
    title = (f'{Path(record["checkpoint"]).name}: MIR = {record["mir"]:.4f} '
             f'(N={record["num_pairs"]}, {record["seconds"]:.1f} s)')
    table = Table(title=title)
    for col in ('layer', 'D_k', 'alpha_k', 'vision rows (replaced)', 'text rows (replaced)'):
        table.add_column(col, justify='right')
    for j, k in enumerate(record['layers']):
        table.add_row(str(k), f'{result.per_layer[j]:.5g}', f'{result.alpha[j]:.4g}',
                      f'{result.num_vision_rows[j]} ({result.num_vision_replaced[j]})',
                      f'{result.num_text_rows[j]} ({result.num_text_replaced[j]})')
    return table


def _summary_table(records: list[dict[str, Any]]) -> Any:
    from rich.table import Table
    table = Table(title='MIR per checkpoint')
    for col in ('iteration', 'checkpoint', 'MIR', 'Σ D_k', 'layers', 'pairs'):
        table.add_column(col, justify='right')
    for r in _sorted_records(records):
        table.add_row('' if r['iteration'] is None else str(r['iteration']), Path(r['checkpoint']).name,
                      f'{r["mir"]:.4f}', f'{sum(r["per_layer"]):.5g}', str(len(r['layers'])), str(r['num_pairs']))
    return table


# ---------------------------------------------------------------------------------------------
# Main entry
# ---------------------------------------------------------------------------------------------
def evaluate_mir(target: str | os.PathLike, config: str | os.PathLike | None = None, *,
                 out_dir: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
                 image_folder: str | os.PathLike | None = None, texts: str | os.PathLike | None = None,
                 eval_num: int = 100, sqrt: str = 'exact', layers: str | None = 'all', device: str | None = None,
                 dtype: str | None = None, text_tokens: str = 'after_image', placement: str = 'reply',
                 text_max_tokens: int | None = DEFAULT_TEXT_MAX_TOKENS, seed: int | None = 0, batch_size: int = 1,
                 skip_bad_images: bool = False, template: str | None = None, overwrite: bool = False,
                 progress: bool = True, plots: bool = True, console: Any = None,
                 model_factory: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    """Score every checkpoint of ``target`` with MIR; write ``mir.json``, ``mir.csv`` and two PNGs.

    Args:
        target: a work dir of ``iter_*.pth``, one ``.pth`` file, or an HF Llava directory.
        config: the mllm_align config the checkpoints were trained with (required for ``.pth``;
            optional for an HF directory, where it only supplies probe defaults).
        out_dir: results folder (default: ``<work dir>/mir``, or ``<hf dir>_mir``).
        images, image_folder: probe images (default: the config's train dataset).
        texts: probe texts (default: ``data/mir_texts``).
        eval_num: N pairs (warns and uses fewer if fewer are available).
        sqrt: ``'exact'`` | ``'seed-sqrtm'`` | ``'seed-fast'``.
        layers: ``'all'`` (1..K) or a spec like ``'1-16'``, ``'1,3,5'`` (HF hidden-state indices).
        device: e.g. ``'cuda'``; default CUDA if available, else CPU.
        dtype: cast the model to ``float32`` / ``bfloat16`` / ``float16`` (default: as the config builds it).
        text_tokens, placement, text_max_tokens, seed, skip_bad_images: probe and extraction options
            (``mllm_align/data/mir_probe.py``, ``mllm_align/models/hidden_states.py``).
        batch_size: pairs per forward pass.
        template: chat template for an HF directory (default: from its export info).
        overwrite: discard results computed with other settings instead of raising.
        progress: show a tqdm bar per checkpoint.
        plots: write the PNGs.
        console: a rich ``Console`` for the tables (default: a new one on stdout).
        model_factory: builds the base model instead of the config (tests).

    Returns:
        The records of every checkpoint of ``target`` (computed now or earlier), in iteration order.

    Raises:
        MIRSettingsMismatch: ``mir.json`` exists with other settings (and not ``overwrite``).
        ValueError / FileNotFoundError: bad inputs, each naming the cause (see the tests).
    """
    from mmengine.config import Config
    from rich.console import Console
    from tqdm import tqdm

    from ..models.builders import load_image_processor, resolve_dtype
    from ..models.export import build_model_from_config, image_processor_from_config

    console = console or Console()
    if sqrt not in SQRT_MODES:
        raise ValueError(f'sqrt={sqrt!r}: use one of {SQRT_MODES}.')
    if text_tokens not in TEXT_TOKENS:
        raise ValueError(f'text_tokens={text_tokens!r}: use one of {TEXT_TOKENS}.')
    refs = discover_checkpoints(target)
    kind = refs[0].kind
    cfg = None
    if config is not None:
        if not Path(config).is_file():
            raise FileNotFoundError(f'Config {str(config)!r} does not exist.')
        cfg = Config.fromfile(str(config))
    elif kind == 'pth':
        raise ValueError('--config is required to score .pth checkpoints: the frozen base model is rebuilt from '
                         'it and only the trained weights come from the checkpoint.')
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch_dtype = None if dtype in (None, 'auto') else resolve_dtype(dtype)
    if images is None:
        if cfg is None:
            raise ValueError('--images is required without --config (no train dataset to take images from).')
        images, cfg_folder = default_probe_sources(cfg)
        image_folder = image_folder if image_folder is not None else cfg_folder

    target_path = Path(target)
    if out_dir is None:
        base = target_path if target_path.is_dir() and kind == 'pth' else target_path.parent
        out_dir = base / 'mir' if kind == 'pth' else target_path.with_name(target_path.name + '_mir')
    out_dir = Path(out_dir)

    # ------------------------------------------------------------------ the probe
    if kind == 'hf':
        image_processor = load_image_processor(str(target_path))
    else:
        image_processor = image_processor_from_config(cfg)
        if image_processor is None:
            raise ValueError(f'Config {config} has no image processor (top-level `image_processor`, the train '
                             'dataset\'s, or a preprocessor_config.json in the vision tower directory).')
    probe = build_mir_probe(images, texts, image_folder=image_folder, eval_num=eval_num, seed=seed,
                            skip_bad_images=skip_bad_images, image_processor=image_processor,
                            placement=placement, text_max_tokens=text_max_tokens)  # type: ignore[arg-type]
    settings = dict(
        probe_fingerprint=probe.fingerprint(), images=str(images),
        image_folder=None if image_folder is None else str(image_folder), texts=probe.sources['texts'],
        eval_num=eval_num, num_pairs=len(probe), seed=seed, layers=_canonical_layers(layers), sqrt=sqrt,
        text_tokens=text_tokens, dtype=str(torch_dtype).replace('torch.', '') if torch_dtype else 'config',
        config=None if config is None else str(Path(config).resolve()),
        config_sha256=None if config is None else _sha256_file(config), template=template, **probe.settings())

    # ------------------------------------------------------------------ previous results
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = load_results(out_dir)
    records: list[dict[str, Any]] = []
    if previous is not None:
        diff = _settings_diff(previous.get('settings', {}), settings)
        if diff and not overwrite:
            raise MIRSettingsMismatch(
                f'{out_dir / "mir.json"} was computed with other settings ({"; ".join(diff)}). Use another --out, '
                'or --overwrite to discard those results.')
        if not diff:
            records = list(previous.get('results', []))
    keys = {json.dumps(r['checkpoint_key'], sort_keys=True): r for r in records}
    todo = [ref for ref in refs if json.dumps(ref.key(), sort_keys=True) not in keys]
    for ref in refs:
        if ref not in todo:
            console.print(f'{ref.name}: already in {out_dir / "mir.json"}, skipped')
    doc = dict(format=RESULTS_FORMAT, target=str(target_path.resolve()), settings=settings,
               probe=dict(pairs=[[p.image_id, p.text_id] for p in probe.pairs],
                          skipped_images=[list(s) for s in probe.skipped_images]),
               versions=dict(torch=torch.__version__), results=records)

    def save() -> None:
        _atomic_write_text(out_dir / 'mir.json', json.dumps(doc, indent=1) + '\n')

    # ------------------------------------------------------------------ the model, once
    if todo:
        if kind == 'hf':
            model = HFLlavaModel.from_pretrained(target_path, template=template, dtype=torch_dtype, device=device)
        else:
            model = model_factory() if model_factory is not None else build_model_from_config(cfg)
            if torch_dtype is not None:
                model.to(torch_dtype)
            model.to(device)
        layer_ids = parse_layers(layers, num_llm_layers(model))
        seen_keys: set[str] = set()
        for ref in todo:
            iteration = ref.iteration
            if ref.kind == 'pth':
                meta_iter = _load_trained(model, ref, str(config), seen_keys)
                iteration = iteration if iteration is not None else meta_iter
            start = time.perf_counter()
            bar = tqdm(total=2 * len(probe), desc=ref.name, unit='pair', disable=not progress, leave=False)
            try:
                result = compute_model_mir(model, probe, layer_ids, sqrt,  # type: ignore[arg-type]
                                           text_tokens=text_tokens,  # type: ignore[arg-type]
                                           batch_size=batch_size, progress=bar)
            finally:
                bar.close()
            record = dict(
                iteration=iteration, checkpoint=str(ref.path), checkpoint_key=ref.key(), mir=result.mir,
                mir_bound=result.mir_bound, layers=layer_ids, per_layer=result.per_layer,
                per_layer_bound=result.per_layer_bound, alpha=result.alpha, num_pairs=len(probe), sqrt=sqrt,
                text_tokens=text_tokens, num_vision_rows=result.num_vision_rows, num_text_rows=result.num_text_rows,
                num_vision_replaced=result.num_vision_replaced, num_text_replaced=result.num_text_replaced,
                seconds=time.perf_counter() - start, device=str(device),
                finished_at=datetime.datetime.now().isoformat(timespec='seconds'))
            if not math.isfinite(result.mir):
                print_log(f'{ref.name}: MIR is {result.mir} (Σ D_k <= 0, possible with sqrt={sqrt!r}).',
                          logger='current', level=logging.WARNING)
            where = record['checkpoint_key']['path']
            records[:] = [r for r in records if r['checkpoint_key']['path'] != where] + [record]
            doc['results'] = _sorted_records(records)
            save()
            console.print(_layer_table(record, result))
    else:
        save()

    records = _sorted_records(records)
    write_csv(records, out_dir / 'mir.csv')
    if plots and records:
        plot_results(records, out_dir)
    wanted = {str(ref.path.resolve()) for ref in refs}
    mine = [r for r in records if r['checkpoint_key']['path'] in wanted]
    console.print(_summary_table(mine))
    console.print(f'Results: {out_dir / "mir.json"}, {out_dir / "mir.csv"}'
                  + (f', {out_dir / "mir_curve.png"}, {out_dir / "mir_layers.png"}' if plots else ''))
    return mine

