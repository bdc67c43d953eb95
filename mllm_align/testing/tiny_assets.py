"""Tiny random models, tokenizers, image processors and a shapes dataset, built offline.

Tests, the demo and the ``*_tiny_cpu.py`` config twins load these through the same
``from_pretrained`` code the real recipes use; nothing is downloaded. Layout under ``root``::

    llm/llama     LlamaForCausalLM   + Llama-3-style tokenizer (chat template)
    llm/qwen2     Qwen2ForCausalLM   + Qwen2/ChatML tokenizer (chat template)
    llm/vicuna    LlamaForCausalLM   + LLaMA-2/Vicuna-style tokenizer (<s>, </s>; `vicuna_v1`)
    vision/clip   CLIPVisionModel    + CLIPImageProcessor
    vision/siglip SiglipVisionModel  + SiglipImageProcessor
    vision/dinov2 Dinov2Model        + BitImageProcessor (DINOv2's preprocessor)
    shapes/       the dataset of `mllm_align.testing.shapes` (images under shapes/images/)
    .complete     stamp: version, parameters, library versions, source hash
    qwen2_vl/     Qwen2VLForConditionalGeneration + Qwen2-VL tokenizer (vision tokens, the real chat
                  template) + Qwen2VLImageProcessor: built on its own by `build_tiny_qwen2_vl`, with
                  its own stamp (qwen2_vl/.complete); a rebuild of the assets above removes it

Sizes: every LLM has hidden 64, 2 layers, 4 heads, 2 KV heads, MLP 128, untied embeddings,
vocabulary = ``len(tokenizer)``. Every vision tower takes 32×32 images in 8×8 patches: a 4×4 grid
of 16 patch tokens (plus a CLS token for CLIP and DINOv2), hidden 64, 2 layers. The shapes images
are 64×64 and the processors resize them.

Builds are deterministic (fixed seeds, safetensors: a rebuild gives identical bytes), idempotent
(a matching ``.complete`` stamp means nothing to do) and atomic (built in a sibling temp directory,
then renamed into place under a file lock, so parallel test processes and interrupted builds never
leave half-written assets).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import PIL
import tokenizers
import torch
import transformers
from transformers import (
    BitImageProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from mllm_align.testing import shapes
from mllm_align.testing.tiny_tokenizer import build_tiny_tokenizer

try:  # POSIX: builders of one root serialise on an flock
    import fcntl
except ImportError:  # elsewhere: build-to-temp + rename alone
    fcntl = None

logger = logging.getLogger(__name__)

# Bump when the layout or the content of the assets changes in a way the stamp cannot see.
TINY_ASSETS_VERSION = '2'
STAMP_NAME = '.complete'

LLMKind = Literal['llama', 'qwen2', 'vicuna']
VisionKind = Literal['clip', 'siglip', 'dinov2']
LLM_KINDS: tuple[str, ...] = ('llama', 'qwen2', 'vicuna')
VISION_KINDS: tuple[str, ...] = ('clip', 'siglip', 'dinov2')

# LLM sizes (all three families)
LLM_HIDDEN_SIZE = 64
LLM_INTERMEDIATE_SIZE = 128
LLM_NUM_LAYERS = 2
LLM_NUM_HEADS = 4
LLM_NUM_KV_HEADS = 2
LLM_MAX_POSITIONS = 2048
# Vision sizes (all three towers): (32 / 8)² = 16 patch tokens, same grid for multi-tower concat.
VISION_IMAGE_SIZE = 32
VISION_PATCH_SIZE = 8
VISION_HIDDEN_SIZE = 64
VISION_INTERMEDIATE_SIZE = 128
VISION_NUM_LAYERS = 2
VISION_NUM_HEADS = 4
VISION_NUM_PATCHES = (VISION_IMAGE_SIZE // VISION_PATCH_SIZE) ** 2
# Shapes dataset image side (pixels)
SHAPES_IMAGE_SIZE = 64

# Tokenizer family per LLM directory, its stop tokens for generation, RoPE base.
_LLM_SPECS: dict[str, dict] = {
    'llama': dict(family='llama3', stop_tokens=('<|eot_id|>', '<|end_of_text|>'),
                  rope_theta=500000.0, seed_offset=1),
    'qwen2': dict(family='qwen2', stop_tokens=('<|im_end|>', '<|endoftext|>'),
                  rope_theta=1000000.0, seed_offset=2),
    'vicuna': dict(family='vicuna', stop_tokens=('</s>',), rope_theta=10000.0, seed_offset=3),
}
# Chat template each tiny LLM is warmed up on (besides the pre-training captions).
_CHAT_TEMPLATE = {'llama': 'llama3', 'qwen2': 'qwen2', 'vicuna': 'vicuna_v1'}
# Text-only warm-up of each LLM, so that a LLaVA run on top of it has a language model to align to:
# a random LLM cannot learn captions from a projector alone, a text-trained one learns to read the
# image (the captions' colour/shape/position words are unpredictable from text alone).
LLM_WARMUP_STEPS = 150
LLM_WARMUP_BATCH = 16
LLM_WARMUP_LR = 3e-3

# Text the chat templates add around conversations; trained into the tokenizers' vocabulary.
_TEMPLATE_TEXTS: tuple[str, ...] = (
    'A chat between a curious user and an artificial intelligence assistant. The assistant '
    "gives helpful, detailed, and polite answers to the user's questions.",
    'A chat between a curious human and an artificial intelligence assistant. The assistant '
    "gives helpful, detailed, and polite answers to the human's questions.",
    'USER: ASSISTANT: Human: Assistant:',
    'system user assistant',
    'You are a helpful assistant.',
    'Cutting Knowledge Date: December 2023',
    'Today Date: 26 Jul 2024',
)


@dataclass(frozen=True)
class TinyAssets:
    """Paths of the built assets; every directory loads with HF ``from_pretrained``."""

    root: Path
    llm_llama: Path
    llm_qwen2: Path
    llm_vicuna: Path
    vision_clip: Path
    vision_siglip: Path
    vision_dinov2: Path
    shapes_root: Path
    image_folder: Path  # the LLaVA JSONs' `image` fields are relative to this
    pretrain_json: Path
    sft_json: Path
    sft_jsonl: Path
    eval_json: Path
    annotations_json: Path
    qwen2_vl: Path  # built by build_tiny_qwen2_vl, not by build_tiny_assets

    def llm(self, kind: LLMKind) -> Path:
        """Directory of the tiny LLM ``kind`` ('llama', 'qwen2' or 'vicuna')."""
        if kind not in LLM_KINDS:
            raise ValueError(f'Unknown LLM kind {kind!r}; expected one of {LLM_KINDS}.')
        return getattr(self, f'llm_{kind}')

    def vision(self, kind: VisionKind) -> Path:
        """Directory of the tiny vision tower ``kind`` ('clip', 'siglip' or 'dinov2')."""
        if kind not in VISION_KINDS:
            raise ValueError(f'Unknown vision kind {kind!r}; expected one of {VISION_KINDS}.')
        return getattr(self, f'vision_{kind}')


def tiny_assets_paths(root: str | Path) -> TinyAssets:
    """The paths `build_tiny_assets` writes under ``root``, without building anything."""
    root = Path(root)
    data = root / 'shapes'
    return TinyAssets(
        root=root,
        llm_llama=root / 'llm' / 'llama',
        llm_qwen2=root / 'llm' / 'qwen2',
        llm_vicuna=root / 'llm' / 'vicuna',
        vision_clip=root / 'vision' / 'clip',
        vision_siglip=root / 'vision' / 'siglip',
        vision_dinov2=root / 'vision' / 'dinov2',
        shapes_root=data,
        image_folder=data,
        pretrain_json=data / shapes.PRETRAIN_JSON,
        sft_json=data / shapes.SFT_JSON,
        sft_jsonl=data / shapes.SFT_JSONL,
        eval_json=data / shapes.EVAL_JSON,
        annotations_json=data / shapes.ANNOTATIONS_JSON,
        qwen2_vl=root / 'qwen2_vl',
    )


# ----------------------------------------------------------------------------------------------
# Builders of single assets
# ----------------------------------------------------------------------------------------------
def _token_id(tokenizer: PreTrainedTokenizerBase, token: str, where: str) -> int:
    vocab = tokenizer.get_vocab()
    if token not in vocab:
        raise ValueError(f'The tiny {where} tokenizer has no {token!r} token; '
                         'mllm_align.testing.tiny_tokenizer must add the family\'s special tokens.')
    return vocab[token]


def _build_llm(kind: str, out_dir: Path, corpus: list[str], vocab_size: int, seed: int,
               warmup_data: list[list[dict]], warmup_steps: int) -> None:
    spec = _LLM_SPECS[kind]
    tokenizer = build_tiny_tokenizer(spec['family'], corpus, vocab_size=vocab_size)
    stop_ids = [_token_id(tokenizer, t, kind) for t in spec['stop_tokens']]
    bos_id = tokenizer.bos_token_id
    if bos_id is None:  # Qwen2 has no BOS token; its config names <|endoftext|> there
        bos_id = stop_ids[-1]
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError(f'The tiny {kind} tokenizer has no pad token; '
                         'mllm_align.testing.tiny_tokenizer must set one.')
    common = dict(vocab_size=len(tokenizer), hidden_size=LLM_HIDDEN_SIZE,
                  intermediate_size=LLM_INTERMEDIATE_SIZE, num_hidden_layers=LLM_NUM_LAYERS,
                  num_attention_heads=LLM_NUM_HEADS, num_key_value_heads=LLM_NUM_KV_HEADS,
                  max_position_embeddings=LLM_MAX_POSITIONS, rope_theta=spec['rope_theta'],
                  tie_word_embeddings=False, bos_token_id=bos_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id)
    torch.manual_seed(seed + spec['seed_offset'])
    if kind == 'qwen2':
        model = Qwen2ForCausalLM(Qwen2Config(rms_norm_eps=1e-6, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(rms_norm_eps=1e-5, **common))
    _warm_up_on_text(model, tokenizer, kind, warmup_data, seed + spec['seed_offset'], warmup_steps)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=stop_ids if len(stop_ids) > 1 else stop_ids[0],
        pad_token_id=pad_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _warm_up_on_text(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, kind: str,
                     conversations: list[list[dict]], seed: int, steps: int) -> None:
    """Train ``model`` as a plain language model on the dataset's text, images removed.

    Captions (one-turn conversations) are encoded with the ``plain`` template, the others with the
    LLM family's chat template, so the tiny LLM knows both formats. Every token is a target. Runs
    single-threaded with a fixed seed, so a rebuild gives the same bytes.
    """
    from mllm_align.constants import IMAGE_TOKEN_INDEX
    from mllm_align.data.templates import encode_conversation

    sequences = []
    for conv in conversations:
        template = 'plain' if len(conv) == 2 and conv[0]['value'].strip() == '<image>' else _CHAT_TEMPLATE[kind]
        ids, _ = encode_conversation(conv, tokenizer, template)
        sequences.append([i for i in ids if i != IMAGE_TOKEN_INDEX])
    pad = tokenizer.pad_token_id
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(seed)
        optim = torch.optim.AdamW(model.parameters(), lr=LLM_WARMUP_LR, weight_decay=0.0)
        model.train()
        loss = torch.zeros(())
        for _ in range(steps):
            pick = torch.randint(len(sequences), (LLM_WARMUP_BATCH,), generator=gen).tolist()
            batch = [sequences[i] for i in pick]
            width = max(len(x) for x in batch)
            ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch])
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optim.zero_grad()
            loss.backward()
            optim.step()
        model.eval()
        logger.info('tiny %s LLM warmed up on text (%d steps): final loss %.3f', kind, steps, loss.item())
    finally:
        torch.set_num_threads(threads)


def _build_vision(kind: str, out_dir: Path, seed: int) -> None:
    size = VISION_IMAGE_SIZE
    common = dict(image_size=size, patch_size=VISION_PATCH_SIZE, hidden_size=VISION_HIDDEN_SIZE,
                  num_hidden_layers=VISION_NUM_LAYERS, num_attention_heads=VISION_NUM_HEADS)
    if kind == 'clip':
        torch.manual_seed(seed + 11)
        model = CLIPVisionModel(CLIPVisionConfig(
            intermediate_size=VISION_INTERMEDIATE_SIZE, hidden_act='quick_gelu',
            projection_dim=VISION_HIDDEN_SIZE, **common))
        processor = CLIPImageProcessor(
            size={'shortest_edge': size}, crop_size={'height': size, 'width': size},
            image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, do_convert_rgb=True)
    elif kind == 'siglip':
        torch.manual_seed(seed + 12)
        model = SiglipVisionModel(SiglipVisionConfig(
            intermediate_size=VISION_INTERMEDIATE_SIZE, **common))
        processor = SiglipImageProcessor(
            size={'height': size, 'width': size}, image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5], do_convert_rgb=True)
    elif kind == 'dinov2':
        torch.manual_seed(seed + 13)
        model = Dinov2Model(Dinov2Config(
            mlp_ratio=VISION_INTERMEDIATE_SIZE // VISION_HIDDEN_SIZE, **common))
        processor = BitImageProcessor(
            size={'shortest_edge': size}, crop_size={'height': size, 'width': size},
            image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD, do_convert_rgb=True)
    else:
        raise ValueError(f'Unknown vision kind {kind!r}; expected one of {VISION_KINDS}.')
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)


def _build_into(out: Path, params: dict) -> None:
    paths = tiny_assets_paths(out)
    files = shapes.generate_shapes(paths.shapes_root, num_train=params['num_train'],
                                   num_eval=params['num_eval'], image_size=SHAPES_IMAGE_SIZE,
                                   seed=params['seed'])
    corpus = shapes.corpus_texts(files.pretrain_json, files.sft_json, files.eval_json)
    corpus += list(_TEMPLATE_TEXTS)
    warmup_data = [sample['conversations'] for path in (files.pretrain_json, files.sft_json)
                   for sample in json.loads(Path(path).read_text(encoding='utf-8'))]
    for kind in LLM_KINDS:
        _build_llm(kind, paths.llm(kind), corpus, params['vocab_size'], params['seed'],
                   warmup_data, params['llm_warmup_steps'])
    for kind in VISION_KINDS:
        _build_vision(kind, paths.vision(kind), params['seed'])


# ----------------------------------------------------------------------------------------------
# Stamp, lock, atomic placement
# ----------------------------------------------------------------------------------------------
def _stamp_text(params: dict) -> str:
    # The code that decides the bytes: this builder, the dataset, the tokenizers and the chat
    # templates they embed. Editing any of them rebuilds the assets on next use.
    package = Path(__file__).parents[1]
    source = hashlib.sha256()
    for rel in ('testing/tiny_assets.py', 'testing/shapes.py', 'testing/tiny_tokenizer.py',
                'data/templates.py'):
        path = package / rel
        source.update(rel.encode() + b'\0' + (path.read_bytes() if path.exists() else b''))
    stamp = {
        'version': TINY_ASSETS_VERSION,
        'params': params,
        'libraries': {'torch': torch.__version__, 'transformers': transformers.__version__,
                      'tokenizers': tokenizers.__version__, 'pillow': PIL.__version__,
                      'numpy': np.__version__},
        'source_sha256': source.hexdigest(),
    }
    return json.dumps(stamp, indent=1, sort_keys=True) + '\n'


def _stamp_matches(root: Path, stamp: str) -> bool:
    try:
        return (root / STAMP_NAME).read_text(encoding='utf-8') == stamp
    except OSError:
        return False


@contextlib.contextmanager
def _file_lock(root: Path) -> Iterator[bool]:
    """Exclusive inter-process lock keyed by ``root``; yields whether a real lock is held."""
    if fcntl is None:
        yield False
        return
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f'mllm_align_tiny_assets_{key}.lock'
    with open(lock_path, 'a') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _looks_like_assets(root: Path) -> bool:
    names = {p.name for p in root.iterdir()}
    return STAMP_NAME in names or names <= {'llm', 'vision', 'shapes', 'qwen2_vl'}


def _check_replaceable(root: Path) -> None:
    """Raise unless ``root`` is missing, an empty directory or a tree of tiny assets."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f'{root} exists and is not a directory; pass another root.')
    if any(root.iterdir()) and not _looks_like_assets(root):
        raise FileExistsError(
            f'{root} is not empty and does not look like tiny assets (no {STAMP_NAME}); '
            'refusing to replace it. Pass an empty or new directory as root.')


def _move_into_place(tmp: Path, root: Path) -> None:
    _check_replaceable(root)
    if root.exists():
        if any(root.iterdir()):
            old = root.parent / f'.{root.name}.old-{uuid.uuid4().hex[:8]}'
            os.replace(root, old)
            try:
                os.replace(tmp, root)
            finally:
                shutil.rmtree(old, ignore_errors=True)
            return
        root.rmdir()
    os.replace(tmp, root)


def build_tiny_assets(root: str | Path,
                      force: bool = False,
                      *,
                      seed: int = 0,
                      num_train: int = 600,
                      num_eval: int = 100,
                      vocab_size: int = 1024,
                      llm_warmup_steps: int = LLM_WARMUP_STEPS) -> TinyAssets:
    """Build (or reuse) the tiny offline assets under ``root``.

    Does nothing when ``root/.complete`` matches this version, these parameters, the installed
    library versions and the builder's source. Otherwise builds into a temporary sibling directory
    and renames it into place, so readers only ever see a complete tree.

    Args:
        root: output directory (created; an existing one must be empty or hold tiny assets).
        force: rebuild even when the stamp matches.
        seed: seed of the dataset and of every model's random initialisation.
        num_train: shapes training images (pre-training and SFT).
        num_eval: held-out shapes images for ``eval.json``.
        vocab_size: upper bound of each trained tokenizer's ``len()`` (special tokens included;
            the small shapes corpus stops the BPE earlier, at a few hundred tokens).

    Returns:
        TinyAssets with every path.

    Raises:
        FileExistsError: ``root`` holds something other than tiny assets.
    """
    root = Path(root).absolute()
    assets = tiny_assets_paths(root)
    params = dict(seed=seed, num_train=num_train, num_eval=num_eval, vocab_size=vocab_size,
                  llm_warmup_steps=llm_warmup_steps,
                  shapes_image_size=SHAPES_IMAGE_SIZE, vision_image_size=VISION_IMAGE_SIZE,
                  vision_patch_size=VISION_PATCH_SIZE, llm_hidden_size=LLM_HIDDEN_SIZE,
                  vision_hidden_size=VISION_HIDDEN_SIZE)
    stamp = _stamp_text(params)
    if not force and _stamp_matches(root, stamp):
        return assets
    root.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(root) as exclusive:
        if not force and _stamp_matches(root, stamp):  # another process built it meanwhile
            return assets
        _check_replaceable(root)
        if exclusive:  # no other builder of this root is running: leftovers are stale
            for pattern in (f'.{root.name}.building-*', f'.{root.name}.old-*'):
                for stale in root.parent.glob(pattern):
                    shutil.rmtree(stale, ignore_errors=True)
        tmp = root.parent / f'.{root.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}'
        try:
            tmp.mkdir()
            logger.info('Building tiny assets in %s', tmp)
            _build_into(tmp, params)
            (tmp / STAMP_NAME).write_text(stamp, encoding='utf-8')
            try:
                _move_into_place(tmp, root)
            except OSError:
                if not _stamp_matches(root, stamp):  # lost a lock-free race to an equal build?
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info('Tiny assets ready in %s', root)
    return assets


# ----------------------------------------------------------------------------------------------
# Tiny Qwen2-VL (its own stamp: building it never rebuilds the assets above)
# ----------------------------------------------------------------------------------------------
# LLM part: the sizes of the other tiny LLMs; head dim 16, so M-RoPE's (t, h, w) sections split its 8
# frequencies 2 + 3 + 3 (Qwen2-VL-7B: 16 + 24 + 24 of 64).
QWEN2_VL_MROPE_SECTION = (2, 3, 3)
# Vision part: 4-px patches, 2 frames per temporal patch, 2×2 merge, so an image becomes
# (H/8)·(W/8) LLM tokens; the processor resizes into [MIN, MAX] pixels on a multiple of 8 (the
# 64×64 shapes images → 32×32 → 16 tokens, like the other towers; a 24×32 image → 12 tokens).
QWEN2_VL_PATCH_SIZE = 4
QWEN2_VL_TEMPORAL_PATCH_SIZE = 2
QWEN2_VL_MERGE_SIZE = 2
QWEN2_VL_VISION_EMBED_DIM = 32
QWEN2_VL_VISION_DEPTH = 2
QWEN2_VL_VISION_HEADS = 4
QWEN2_VL_MIN_PIXELS = 16 * 16
QWEN2_VL_MAX_PIXELS = 32 * 32
QWEN2_VL_STOP_TOKENS = ('<|im_end|>', '<|endoftext|>')


def _build_qwen2_vl(out_dir: Path, corpus: list[str], vocab_size: int, seed: int) -> None:
    """A random Qwen2VLForConditionalGeneration, its tokenizer and image processor, saved into ``out_dir``."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    tokenizer = build_tiny_tokenizer('qwen2_vl', corpus, vocab_size=vocab_size)
    ids = {t: _token_id(tokenizer, t, 'qwen2_vl') for t in ('<|image_pad|>', '<|video_pad|>', '<|vision_start|>',
                                                            '<|vision_end|>', *QWEN2_VL_STOP_TOKENS)}
    stop_ids = [ids[t] for t in QWEN2_VL_STOP_TOKENS]
    pad_id = tokenizer.pad_token_id
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=LLM_HIDDEN_SIZE, intermediate_size=LLM_INTERMEDIATE_SIZE,
        num_hidden_layers=LLM_NUM_LAYERS, num_attention_heads=LLM_NUM_HEADS, num_key_value_heads=LLM_NUM_KV_HEADS,
        max_position_embeddings=LLM_MAX_POSITIONS, rope_theta=1000000.0, rms_norm_eps=1e-6,
        rope_scaling={'type': 'mrope', 'mrope_section': list(QWEN2_VL_MROPE_SECTION)},
        tie_word_embeddings=False, bos_token_id=stop_ids[-1], eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id)
    vision_config = dict(
        depth=QWEN2_VL_VISION_DEPTH, embed_dim=QWEN2_VL_VISION_EMBED_DIM, hidden_size=LLM_HIDDEN_SIZE,
        num_heads=QWEN2_VL_VISION_HEADS, mlp_ratio=2, in_channels=3, patch_size=QWEN2_VL_PATCH_SIZE,
        spatial_merge_size=QWEN2_VL_MERGE_SIZE, temporal_patch_size=QWEN2_VL_TEMPORAL_PATCH_SIZE)
    config = Qwen2VLConfig(
        text_config=text_config, vision_config=vision_config, image_token_id=ids['<|image_pad|>'],
        video_token_id=ids['<|video_pad|>'], vision_start_token_id=ids['<|vision_start|>'],
        vision_end_token_id=ids['<|vision_end|>'], tie_word_embeddings=False,
        bos_token_id=stop_ids[-1], eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id,
        architectures=['Qwen2VLForConditionalGeneration'])
    torch.manual_seed(seed + 21)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=stop_ids[-1], eos_token_id=stop_ids,
                                               pad_token_id=pad_id)
    processor = Qwen2VLImageProcessor(
        min_pixels=QWEN2_VL_MIN_PIXELS, max_pixels=QWEN2_VL_MAX_PIXELS, patch_size=QWEN2_VL_PATCH_SIZE,
        temporal_patch_size=QWEN2_VL_TEMPORAL_PATCH_SIZE, merge_size=QWEN2_VL_MERGE_SIZE,
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, do_convert_rgb=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def build_tiny_qwen2_vl(root: str | Path, force: bool = False, *, seed: int = 0,
                        vocab_size: int = 1024) -> Path:
    """Build (or reuse) the tiny random Qwen2-VL at ``root/qwen2_vl`` and return that directory.

    The tokenizer trains on the shapes dataset's text, so the assets under ``root`` are built first
    (with the default parameters) when ``root`` holds none; existing ones are used as they are. The
    directory has its own ``.complete`` stamp
    (this builder's source, parameters, library versions) and is written to a temporary sibling and
    renamed into place under a file lock, like :func:`build_tiny_assets`. A rebuild of the default
    assets replaces ``root`` and removes this directory; the next call builds it again.

    Loads with ``Qwen2VLForConditionalGeneration.from_pretrained``, ``AutoTokenizer`` (Qwen2-VL's
    special tokens and chat template) and ``AutoImageProcessor`` (``Qwen2VLImageProcessor``).
    """
    root = Path(root).absolute()
    assets = tiny_assets_paths(root) if (root / STAMP_NAME).is_file() else build_tiny_assets(root)
    out = assets.qwen2_vl
    params = dict(seed=seed, vocab_size=vocab_size, patch_size=QWEN2_VL_PATCH_SIZE,
                  merge_size=QWEN2_VL_MERGE_SIZE, min_pixels=QWEN2_VL_MIN_PIXELS, max_pixels=QWEN2_VL_MAX_PIXELS,
                  mrope_section=list(QWEN2_VL_MROPE_SECTION), hidden_size=LLM_HIDDEN_SIZE,
                  vision_embed_dim=QWEN2_VL_VISION_EMBED_DIM, assets_stamp=(root / STAMP_NAME).read_text())
    stamp = _stamp_text(params)
    if not force and _stamp_matches(out, stamp):
        return out
    with _file_lock(out):
        if not force and _stamp_matches(out, stamp):
            return out
        tmp = root / f'.{out.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}'
        try:
            tmp.mkdir()
            files = tiny_assets_paths(root)
            corpus = shapes.corpus_texts(files.pretrain_json, files.sft_json, files.eval_json)
            corpus += list(_TEMPLATE_TEXTS)
            _build_qwen2_vl(tmp, corpus, vocab_size, seed)
            (tmp / STAMP_NAME).write_text(stamp, encoding='utf-8')
            if out.exists():
                old = root / f'.{out.name}.old-{uuid.uuid4().hex[:8]}'
                os.replace(out, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info('Tiny Qwen2-VL ready in %s', out)
    return out


# ----------------------------------------------------------------------------------------------
# Summary (used by tools/build_tiny_assets.py)
# ----------------------------------------------------------------------------------------------
def _safetensors_numel(path: Path) -> int:
    with open(path, 'rb') as handle:
        (header_len,) = struct.unpack('<Q', handle.read(8))
        header = json.loads(handle.read(header_len))
    return sum(int(np.prod(v['shape'])) for k, v in header.items() if k != '__metadata__')


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob('*') if p.is_file())


def summarize_tiny_assets(assets: TinyAssets) -> list[dict[str, object]]:
    """One row per built asset: name, path, parameter count, bytes on disk and a detail line."""
    rows: list[dict[str, object]] = []
    for kind in LLM_KINDS:
        path = assets.llm(kind)
        config = json.loads((path / 'config.json').read_text())
        rows.append(dict(name=f'llm/{kind}', path=str(path),
                         params=_safetensors_numel(path / 'model.safetensors'),
                         bytes=_dir_bytes(path),
                         detail=f"{config['architectures'][0]}, vocab {config['vocab_size']}, "
                                f"hidden {config['hidden_size']}, "
                                f"{config['num_hidden_layers']} layers"))
    cls_token = {'clip': ' + CLS', 'siglip': '', 'dinov2': ' + CLS'}
    for kind in VISION_KINDS:
        path = assets.vision(kind)
        config = json.loads((path / 'config.json').read_text())
        grid = config['image_size'] // config['patch_size']
        rows.append(dict(name=f'vision/{kind}', path=str(path),
                         params=_safetensors_numel(path / 'model.safetensors'),
                         bytes=_dir_bytes(path),
                         detail=f"{config['architectures'][0]}, {config['image_size']} px, "
                                f'{grid}x{grid}={grid * grid} patches{cls_token[kind]}'))
    counts = {name: len(json.loads(getattr(assets, name).read_text()))
              for name in ('pretrain_json', 'sft_json', 'eval_json')}
    num_images = sum(1 for _ in (assets.shapes_root / shapes.IMAGE_DIR).glob('*.png'))
    if (assets.qwen2_vl / 'config.json').is_file():
        config = json.loads((assets.qwen2_vl / 'config.json').read_text())
        vision, text = config['vision_config'], config.get('text_config', config)
        rows.append(dict(name='qwen2_vl', path=str(assets.qwen2_vl),
                         params=_safetensors_numel(assets.qwen2_vl / 'model.safetensors'),
                         bytes=_dir_bytes(assets.qwen2_vl),
                         detail=f"{config.get('architectures', [config['model_type']])[0]}, vocab "
                                f"{text['vocab_size']}, hidden "
                                f"{text['hidden_size']}, {text['num_hidden_layers']} layers; vision depth "
                                f"{vision['depth']}, {vision['patch_size']}-px patches, merge "
                                f"{vision['spatial_merge_size']}"))
    rows.append(dict(name='shapes', path=str(assets.shapes_root), params=0,
                     bytes=_dir_bytes(assets.shapes_root),
                     detail=f"{num_images} images; pretrain {counts['pretrain_json']}, "
                            f"sft {counts['sft_json']}, eval {counts['eval_json']} samples"))
    return rows


__all__ = ['TinyAssets', 'build_tiny_assets', 'build_tiny_qwen2_vl', 'tiny_assets_paths', 'summarize_tiny_assets',
           'TINY_ASSETS_VERSION', 'LLM_KINDS', 'VISION_KINDS', 'VISION_IMAGE_SIZE',
           'VISION_PATCH_SIZE', 'VISION_NUM_PATCHES', 'LLM_HIDDEN_SIZE', 'VISION_HIDDEN_SIZE',
           'SHAPES_IMAGE_SIZE']
