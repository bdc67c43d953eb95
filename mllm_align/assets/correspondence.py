"""Real photo pairs with ground-truth correspondences, written in the SPair-71k layout (for the C score).

Source: Debian's ``opencv-doc`` package (version :data:`DEB_VERSION`, SHA-256 :data:`DEB_SHA256`; the OpenCV
sample data, BSD-3-Clause / Apache-2.0), fetched with ``apt-get download`` and read here as an ``ar`` archive
(never installed):

- ``graffiti``: graf1.png → graf3.png (a planar wall seen from two viewpoints) with the ground-truth
  homography ``H1to3p.xml`` (Mikolajczyk et al.): x₃ ∝ H · (x₁, y₁, 1);
- ``aloe``: aloeL.jpg → aloeR.jpg (Middlebury stereo) with the left image's disparity ``aloeGT.png``
  (pixels; 0 = unknown): x_R = x_L − d(x_L, y_L), same row (checked: patches agree at d, not at d/2 or 2d);
- ``motorcycle``: scikit-image's ``stereo_motorcycle`` (Middlebury 2014, read from the pinned scikit-image wheel,
  :data:`~mllm_align.assets.wheels.PINS`, never installed): motorcycle_left.png → motorcycle_right.png with the
  left disparity ``motorcycle_disp.npz`` (pixels, float; inf = unknown), x_R = x_L − d (checked the same way:
  mean 15×15 NCC 0.80 at d against 0.14 at d/2 and 0.08 at 2d).

Source keypoints are corners of the source image (OpenCV's Shi–Tomasi detector, deterministic), mapped to the
target; kept when they land inside the target (and, for stereo, where the disparity is known), at most
:data:`MAX_KEYPOINTS` per pair (SPair's 30). The target box is the box around the mapped keypoints, so PCK@0.1
measures correspondence within the region the keypoints cover. Written by ``data/prepare_real.py`` to
``data/real/correspondence`` (split ``test``).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from .wheels import AssetError

__all__ = ['DEB_NAME', 'DEB_VERSION', 'DEB_SHA256', 'CONVERTER_VERSION', 'SKIMAGE_MEMBERS', 'fetch_opencv_doc',
           'read_deb_members', 'read_skimage_members', 'parse_opencv_matrix', 'write_correspondence_spair']

CONVERTER_VERSION = '2'
DEB_NAME = 'opencv-doc'
DEB_VERSION = '4.6.0+dfsg-12'
DEB_FILENAME = 'opencv-doc_4.6.0+dfsg-12_all.deb'
DEB_SHA256 = '4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a'
DATA_DIR = 'usr/share/doc/opencv-doc/examples/data/'
MEMBERS = ('graf1.png', 'graf3.png', 'H1to3p.xml', 'aloeL.jpg', 'aloeR.jpg', 'aloeGT.png')
SKIMAGE_MEMBERS = ('motorcycle_left.png', 'motorcycle_right.png', 'motorcycle_disp.npz')
MAX_KEYPOINTS = 30
REPAIR = 'python data/prepare_real.py --only correspondence'


def fetch_opencv_doc(dest_dir: Path) -> Path:
    """The pinned ``opencv-doc`` .deb in ``dest_dir`` (downloaded with ``apt-get download`` once), SHA-256 checked."""
    dest_dir = Path(dest_dir)
    path = dest_dir / DEB_FILENAME
    if not path.is_file():
        dest_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(['apt-get', 'download', f'{DEB_NAME}={DEB_VERSION}'], cwd=dest_dir,
                              capture_output=True, text=True)
        if proc.returncode != 0 or not path.is_file():
            raise AssetError(f'Could not download the Debian package {DEB_NAME}={DEB_VERSION} (apt-get download): '
                             f'{(proc.stderr or "").strip()[-300:]}. Check that Debian\'s archive is reachable, or '
                             f'put {DEB_FILENAME} into {dest_dir} by hand, then re-run `{REPAIR}`.')
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != DEB_SHA256:
        raise AssetError(f'{path} is not the pinned {DEB_NAME} {DEB_VERSION}: SHA-256 {got}, expected {DEB_SHA256}. '
                         f'Delete it and re-run `{REPAIR}`.')
    return path


def read_deb_members(deb: Path, names: tuple[str, ...] = MEMBERS, prefix: str = DATA_DIR) -> dict[str, bytes]:
    """Files ``prefix + name`` of a .deb's data archive (an ``ar`` archive holding ``data.tar.*``)."""
    blob = Path(deb).read_bytes()
    if not blob.startswith(b'!<arch>\n'):
        raise AssetError(f'{deb} is not a Debian package (no ar header): delete it and re-run `{REPAIR}`.')
    pos, data = 8, None
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]
        name, size = header[:16].decode().strip().rstrip('/'), int(header[48:58].decode().strip())
        body = blob[pos + 60:pos + 60 + size]
        if name.startswith('data.tar'):
            data = body
            break
        pos += 60 + size + (size % 2)  # members are 2-byte aligned
    if data is None:
        raise AssetError(f'{deb} has no data.tar member: delete it and re-run `{REPAIR}`.')
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode='r:*') as tar:
        for member in tar.getmembers():
            path = member.name.lstrip('./')
            if path.startswith(prefix) and path[len(prefix):] in names:
                out[path[len(prefix):]] = tar.extractfile(member).read()
    missing = sorted(set(names) - set(out))
    if missing:
        raise AssetError(f'{deb} lacks {missing} under {prefix}.')
    return out


def read_skimage_members(wheel: Path, names: tuple[str, ...] = SKIMAGE_MEMBERS) -> dict[str, bytes]:
    """Files ``skimage/data/<name>`` of the pinned scikit-image wheel (read as a zip archive)."""
    from .wheels import read_member
    return {name: read_member(Path(wheel), f'skimage/data/{name}') for name in names}


def parse_opencv_matrix(xml: str, name: str | None = None) -> np.ndarray:
    """A matrix of an OpenCV FileStorage XML file (``<rows>``, ``<cols>``, ``<data>``), float64."""
    block = xml if name is None else re.search(rf'<{name}[^>]*>(.*?)</{name}>', xml, re.S).group(1)
    rows = int(re.search(r'<rows>\s*(\d+)\s*</rows>', block).group(1))
    cols = int(re.search(r'<cols>\s*(\d+)\s*</cols>', block).group(1))
    values = [float(v) for v in re.search(r'<data>(.*?)</data>', block, re.S).group(1).split()]
    if len(values) != rows * cols:
        raise ValueError(f'OpenCV matrix: {len(values)} values for {rows}×{cols}.')
    return np.array(values).reshape(rows, cols)


def _corners(image: Image.Image, count: int = 120) -> np.ndarray:
    import cv2
    gray = np.asarray(image.convert('L'))
    pts = cv2.goodFeaturesToTrack(gray, maxCorners=count, qualityLevel=0.01, minDistance=25, blockSize=7)
    return pts.reshape(-1, 2).astype(np.float64)  # (N, 2) x, y, strongest first


def _write_pair(root: Path, category: str, src: Image.Image, trg: Image.Image, ks: np.ndarray, kt: np.ndarray,
                index: int = 0) -> dict:
    names = [f'{category}_src', f'{category}_trg']
    (root / 'JPEGImages' / category).mkdir(parents=True, exist_ok=True)
    (root / 'ImageAnnotation' / category).mkdir(parents=True, exist_ok=True)
    (root / 'PairAnnotation' / 'test').mkdir(parents=True, exist_ok=True)
    boxes = []
    for name, image, kps in zip(names, (src, trg), (ks, kt)):
        image.convert('RGB').save(root / 'JPEGImages' / category / f'{name}.jpg', quality=95)
        box = [float(kps[:, 0].min()), float(kps[:, 1].min()), float(kps[:, 0].max()), float(kps[:, 1].max())]
        boxes.append([round(v, 2) for v in box])
        ann = dict(filename=f'{name}.jpg', category=category, image_width=image.width, image_height=image.height,
                   image_depth=3, bndbox=boxes[-1],
                   kps={str(k): [round(float(x), 2), round(float(y), 2)] for k, (x, y) in enumerate(kps)})
        (root / 'ImageAnnotation' / category / f'{name}.json').write_text(json.dumps(ann))
    pair = dict(pair_id=index, category=category, src_imname=f'{names[0]}.jpg', trg_imname=f'{names[1]}.jpg',
                src_imsize=[src.width, src.height, 3], trg_imsize=[trg.width, trg.height, 3],
                src_bndbox=boxes[0], trg_bndbox=boxes[1], kps_ids=[str(k) for k in range(len(ks))],
                src_kps=[[round(float(x), 2), round(float(y), 2)] for x, y in ks],
                trg_kps=[[round(float(x), 2), round(float(y), 2)] for x, y in kt])
    (root / 'PairAnnotation' / 'test' / f'{index:06d}-{names[0]}-{names[1]}:{category}.json').write_text(
        json.dumps(pair))
    return dict(category=category, keypoints=len(ks))


def _inside(pts: np.ndarray, image: Image.Image, margin: float = 2.0) -> np.ndarray:
    return (pts[:, 0] >= margin) & (pts[:, 1] >= margin) & (pts[:, 0] <= image.width - 1 - margin) & \
        (pts[:, 1] <= image.height - 1 - margin)


def write_correspondence_spair(members: dict[str, bytes], out_dir: Path) -> dict:
    """Write the graffiti and aloe pairs (module docstring) under ``out_dir``; returns what was written."""
    out_dir = Path(out_dir)
    load = lambda n: Image.open(io.BytesIO(members[n]))  # noqa: E731
    written = []
    # graffiti: homography
    g1, g3 = load('graf1.png').convert('RGB'), load('graf3.png').convert('RGB')
    H = parse_opencv_matrix(members['H1to3p.xml'].decode(), 'H13')
    ks = _corners(g1)
    proj = np.column_stack([ks, np.ones(len(ks))]) @ H.T
    kt = proj[:, :2] / proj[:, 2:3]
    keep = _inside(ks, g1) & _inside(kt, g3)
    written.append(_write_pair(out_dir, 'graffiti', g1, g3, ks[keep][:MAX_KEYPOINTS], kt[keep][:MAX_KEYPOINTS], 0))
    # aloe: disparity of the left image
    left, right = load('aloeL.jpg').convert('RGB'), load('aloeR.jpg').convert('RGB')
    disp = np.asarray(load('aloeGT.png'))
    disp = disp if disp.ndim == 2 else disp[..., 0]
    ks = _corners(left)
    d = disp[np.clip(ks[:, 1].round().astype(int), 0, disp.shape[0] - 1),
             np.clip(ks[:, 0].round().astype(int), 0, disp.shape[1] - 1)].astype(np.float64)
    kt = np.column_stack([ks[:, 0] - d, ks[:, 1]])
    keep = (d > 0) & _inside(ks, left) & _inside(kt, right)
    written.append(_write_pair(out_dir, 'aloe', left, right, ks[keep][:MAX_KEYPOINTS], kt[keep][:MAX_KEYPOINTS], 1))
    if 'motorcycle_disp.npz' in members:  # motorcycle: float disparity of the left image, inf = unknown
        left, right = load('motorcycle_left.png').convert('RGB'), load('motorcycle_right.png').convert('RGB')
        with np.load(io.BytesIO(members['motorcycle_disp.npz'])) as npz:
            disp = np.asarray(npz[npz.files[0]], dtype=np.float64)
        ks = _corners(left)
        d = disp[np.clip(ks[:, 1].round().astype(int), 0, disp.shape[0] - 1),
                 np.clip(ks[:, 0].round().astype(int), 0, disp.shape[1] - 1)]
        kt = np.column_stack([ks[:, 0] - np.where(np.isfinite(d), d, 0.0), ks[:, 1]])
        keep = np.isfinite(d) & (d > 0) & _inside(ks, left) & _inside(kt, right)
        written.append(_write_pair(out_dir, 'motorcycle', left, right, ks[keep][:MAX_KEYPOINTS],
                                   kt[keep][:MAX_KEYPOINTS], 2))
    return dict(pairs=written, source=f'{DEB_NAME} {DEB_VERSION}' + (', scikit-image 0.25.2' if len(written) > 2
                                                                          else ''))
