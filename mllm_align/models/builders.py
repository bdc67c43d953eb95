"""Builders that load Hugging Face parts from local directories, with errors that name the fix.

Configs call these through ``type=``: ``llm=dict(type=load_llm, path=llm_name_or_path, ...)``.
Nothing here downloads: a path that is not a local directory is an error.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

DTypeName = Literal['float32', 'bfloat16', 'float16', 'auto']
_DTYPES = {'float32': torch.float32, 'fp32': torch.float32, 'bfloat16': torch.bfloat16,
           'bf16': torch.bfloat16, 'float16': torch.float16, 'fp16': torch.float16}


def check_model_dir(path: str | os.PathLike, what: str, config_key: str) -> Path:
    """Return ``path`` as a Path if it is a local model directory, else raise naming the fix.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no ``config.json``.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(
            f'{what} directory {str(p)!r} does not exist. mllm_align never downloads: put the model '
            f"there (e.g. `huggingface-cli download <repo> --local-dir {p}` on a machine with "
            f'network access) or set `{config_key}` in PART 1 of the config to a local directory. '
            'For the tiny CPU configs run `python tools/build_tiny_assets.py` first.')
    if not (p / 'config.json').is_file() and not any(p.glob('*.gguf')):
        raise FileNotFoundError(
            f'{what} directory {str(p)!r} holds no config.json: it is not a Hugging Face model '
            f'directory. Point `{config_key}` at the folder that contains config.json.')
    return p


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """Map a config dtype name (``'bfloat16'``, ``'float32'``, …) to a torch dtype."""
    if isinstance(dtype, torch.dtype) or dtype == 'auto':
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f'Unknown dtype {dtype!r}: use one of {sorted(_DTYPES)} or "auto".')
    return _DTYPES[dtype]


def flash_attn_available() -> bool:
    """Whether the optional ``flash-attn`` package (GPU extra) is importable."""
    return importlib.util.find_spec('flash_attn') is not None


def check_attn_implementation(attn_implementation: str) -> str:
    """Validate the attention backend named in a config, failing early with the fix."""
    valid = ('eager', 'sdpa', 'flash_attention_2')
    if attn_implementation not in valid:
        raise ValueError(f'attn_implementation={attn_implementation!r}: use one of {valid}.')
    if attn_implementation == 'flash_attention_2':
        if not torch.cuda.is_available():
            raise RuntimeError("attn_implementation='flash_attention_2' needs a CUDA GPU; use 'sdpa' "
                               'on CPU (the tiny configs do).')
        if not flash_attn_available():
            raise RuntimeError("attn_implementation='flash_attention_2' but flash-attn is not installed: "
                               "`pip install -e .[gpu]` on the GPU node, or use 'sdpa'.")
    return attn_implementation


def load_llm(path: str, dtype: DTypeName | torch.dtype = 'float32',
             attn_implementation: str = 'sdpa', trust_remote_code: bool = False,
             gguf_file: str | None = None, **kwargs: Any) -> PreTrainedModel:
    """Load a decoder-only causal LM (``AutoModelForCausalLM``) from a local directory.

    Args:
        path: local model directory (``config.json`` + weights).
        dtype: parameter dtype: ``'float32'`` on CPU, ``'bfloat16'`` on GPU recipes.
        attn_implementation: ``'eager'``, ``'sdpa'`` or ``'flash_attention_2'`` (GPU + flash-attn).
        trust_remote_code: allow the directory's own modelling code; only when the config says so.
        gguf_file: load GGUF weights inside ``path`` (needs the ``gguf`` package).
    """
    from ..checkpoint_io import hf_weights_kwargs

    p = check_model_dir(path, 'LLM', 'llm_name_or_path')
    model = AutoModelForCausalLM.from_pretrained(
        str(p), dtype=resolve_dtype(dtype),
        attn_implementation=check_attn_implementation(attn_implementation),
        trust_remote_code=trust_remote_code, gguf_file=gguf_file, **{**hf_weights_kwargs(p), **kwargs})
    return model


def load_tokenizer(path: str, trust_remote_code: bool = False, extra_special_tokens: Sequence[str] = (),
                   **kwargs: Any) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory; sets ``pad_token`` to ``eos`` when it has none.

    ``extra_special_tokens`` (e.g. CoLVA's ``<VPT_CONTEXT>``) are added as special tokens when the
    tokenizer lacks them (appended ids, in the given order); the model resizes its embeddings to
    ``len(tokenizer)``. The dataset and the model load the same directory with the same list, so both
    see the same ids.
    """
    p = check_model_dir(path, 'Tokenizer', 'llm_name_or_path')
    tokenizer = AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    vocab = tokenizer.get_vocab()
    missing = [t for t in extra_special_tokens if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({'additional_special_tokens': missing}, replace_additional_special_tokens=False)
    return tokenizer


def load_image_processor(path: str, trust_remote_code: bool = False, use_fast: bool = False,
                         **kwargs: Any) -> Any:
    """Load the vision tower's HF image processor from a local directory.

    ``use_fast=False`` by default: the PIL/numpy processors are what the checkpoints were trained
    with, and transformers' "fast" processors need torchvision, which this toolkit does not use.
    """
    p = check_model_dir(path, 'Image processor', 'visual_encoder_name_or_path')
    return AutoImageProcessor.from_pretrained(str(p), trust_remote_code=trust_remote_code, use_fast=use_fast,
                                              **kwargs)


def load_config(path: str, trust_remote_code: bool = False) -> Any:
    """``AutoConfig`` of a local model directory."""
    return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def resolve_pad_token_id(config: Any, tokenizer: Any = None) -> int:
    """The pad id: the LLM config's ``pad_token_id``, else the tokenizer's, else 0.

    Padding positions are masked out everywhere, so the value only has to be a valid id.
    """
    pad = getattr(config, 'pad_token_id', None)
    if pad is None and tokenizer is not None:
        pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else 0
