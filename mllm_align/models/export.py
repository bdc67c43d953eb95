"""Export a trained :class:`LLaVAModel` as a transformers ``LlavaForConditionalGeneration`` directory.

What maps how::

    mllm_align LLaVAModel                    transformers LlavaForConditionalGeneration
    ─────────────────────                    ──────────────────────────────────────────
    llm (LoRA merged)  .get_decoder()    ──► model.language_model      (LlamaModel, Qwen2Model, …)
                       .lm_head          ──► lm_head
    visual_encoder.model (LoRA merged)   ──► model.vision_tower        (CLIPVisionModel, SiglipVisionModel, …)
    projector.0  Linear(C, D)            ──► model.multi_modal_projector.linear_1
    projector.1  GELU                    ──► projector_hidden_act = 'gelu'
    projector.2  Linear(D, D)            ──► model.multi_modal_projector.linear_2
    visual_encoder.select_layer          ──► vision_feature_layer
    'patch' + 1 prefix token (CLIP CLS)  ──► vision_feature_select_strategy = 'default'  (drop one token)
    'patch' + 0 prefix (SigLIP), or
    'cls_patch' (keep every token)       ──► vision_feature_select_strategy = 'full'
    IMAGE_TOKEN_INDEX placeholder        ──► a real ``<image>`` token (added to the tokenizer if absent),
                                             repeated ``image_seq_length`` times per image
    model.plugins (in order)             ──► each plug-in's ``export_files(model, dir)`` beside the weights
                                             (MoCa: moca.safetensors + moca_config.json), recorded in
                                             mllm_align_export.json ``plugins``; ``load_hf_dir(dir)``
                                             re-attaches them (``cls.from_export``); a plug-in with
                                             ``exportable = False`` refuses the export

Only the ``mlp2x_gelu`` projector has a counterpart in HF's ``LlavaMultiModalProjector``
(Linear → act → Linear); a 'patch' tower with more than one prefix token (DINOv2 with registers)
has none either, since HF's 'default' strategy drops exactly one token. Both raise a ValueError.

The HF model is built on the meta device and every part is loaded with
``load_state_dict(strict=True, assign=True)`` into its submodule, so no key name is hand-written
and a layout mismatch fails loudly. The caller's model is never mutated: a LoRA-wrapped LLM or
vision tower is deep-copied and merged with peft's ``merge_and_unload`` (peak memory: one extra
copy of that part); without LoRA the tensors are shared, not copied.

The processing files make the export drivable as evaluation harnesses drive a Llava model
(lmms-eval ``llava_hf``, VLMEvalKit; :mod:`mllm_align.models.hf_processor`): the chat template is the
one the model was trained with (``template``, as Jinja), the tokenizer adds no BOS of its own and
returns no ``token_type_ids``, and the image processor pads to a square with the image mean as
training did (``LlavaImageProcessor(do_pad=True)`` when ``pad_image_to_square``).
``generation_config`` stops at the template's stop tokens. After saving, the processor is loaded
back and checked against mllm_align's prompt ids and ``pixel_values``.

This module takes built objects and plain settings only; reading them from a training config is
``mllm_align/engine/build.py``'s job (``tools/convert_to_hf.py`` calls both).
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from mmengine.logging import print_log
from torch import nn

from ..constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from ..data.hf_chat_template import chat_template_jinja
from ..data.templates import get_template
from .builders import resolve_dtype, resolve_pad_token_id
from .export_dir import (
    EXPORT_INFO_NAME,
    check_plugins_exportable,
    export_plugins,
    prepare_out_dir,
    staged_export_dir,
)
from .hf_processor import (
    build_llava_processor,
    check_processor_contract,
    generation_token_ids,
    harness_tokenizer,
    llava_image_processor,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .llava import LLaVAModel

__all__ = ['EXPORT_INFO_NAME', 'compare_logits', 'expand_image_placeholders', 'export_llava_to_hf',
           'vision_feature_select_strategy']
_GELU_ACTS = {'none': 'gelu', 'tanh': 'gelu_pytorch_tanh'}


# ---------------------------------------------------------------------------------------- export
def _unwrap_lora(module: nn.Module) -> tuple[nn.Module, bool]:
    """The plain HF model: a deep copy merged with ``merge_and_unload`` if peft-wrapped, else itself."""
    try:
        from peft import PeftModel
    except ImportError:  # peft absent: nothing can be wrapped
        return module, False
    if isinstance(module, PeftModel):
        return copy.deepcopy(module).merge_and_unload(), True
    return module, False


def _check_parts(model: 'LLaVAModel') -> None:
    """Every part with parameters has a place in the export: LLM, tower, projector, or an exportable plug-in.

    Raises:
        ValueError: a plug-in with ``exportable = False`` (naming it), or a part with parameters that
            LlavaForConditionalGeneration has no place for.
    """
    check_plugins_exportable(model, 'LlavaForConditionalGeneration')
    towers = getattr(model.visual_encoder, 'towers', None)
    if isinstance(towers, torch.nn.ModuleList):
        raise ValueError(f'model.visual_encoder combines {len(towers)} vision towers (MultiTowerEncoder); '
                         'LlavaForConditionalGeneration has one tower. Keep evaluating this model with mllm_align '
                         '(tools/eval_mir.py, tools/eval_vqa.py, tools/a_score.py).')
    if getattr(model.visual_encoder, 'pool', 1) != 1:
        raise ValueError(f'model.visual_encoder pools its patch grid (pool={model.visual_encoder.pool}), which '
                         'LlavaForConditionalGeneration cannot do: its image tokens would differ from training. '
                         'Keep evaluating this model with mllm_align (tools/eval_mir.py, tools/eval_vqa.py, '
                         'tools/chat.py), or train without pooling to export.')
    known = {id(m) for m in (model.language_model, model.visual_encoder, model.projector, model.data_preprocessor)}
    known |= {id(p) for p in model.plugins.values()}
    extra = [name for name, child in model.named_children()
             if id(child) not in known and any(True for _ in child.parameters())]
    if extra:
        raise ValueError(f'{type(model).__name__} has parameters in {extra} that LlavaForConditionalGeneration has '
                         'no place for; exporting would silently drop them. Export a model without these parts, '
                         'or keep evaluating it with mllm_align.')


def _projector_state(projector: nn.Module) -> tuple[dict[str, torch.Tensor], str, bool]:
    """Map an ``mlp2x_gelu`` projector onto ``LlavaMultiModalProjector`` (state, act name, bias)."""
    layers = list(projector.children()) if isinstance(projector, nn.Sequential) else []
    is_mlp2x = (len(layers) == 3 and isinstance(layers[0], nn.Linear) and isinstance(layers[1], nn.GELU)
                and isinstance(layers[2], nn.Linear))
    if not is_mlp2x:
        desc = ' → '.join(type(m).__name__ for m in layers) or type(projector).__name__
        raise ValueError(
            f"Cannot export projector [{desc}]: transformers' LlavaMultiModalProjector is exactly "
            "Linear(C, D) → GELU → Linear(D, D) (mllm_align's 'mlp2x_gelu'). A 'linear' or "
            "'mlp{N}x_gelu' (N != 2) projector has no HF Llava counterpart: retrain with "
            "projector=dict(type='mlp2x_gelu') or use the model through mllm_align.")
    if (layers[0].bias is None) != (layers[2].bias is None):
        raise ValueError('Cannot export a projector with a bias on one Linear only: HF Llava has a single '
                         '`multimodal_projector_bias` switch.')
    act = _GELU_ACTS[layers[1].approximate]
    state = {f'linear_1.{k}': v for k, v in layers[0].state_dict().items()}
    state.update({f'linear_2.{k}': v for k, v in layers[2].state_dict().items()})
    return state, act, layers[0].bias is not None


def vision_feature_select_strategy(select_feature: str, num_prefix_tokens: int, tower_name: str = '') -> str:
    """HF's ``vision_feature_select_strategy`` that reproduces a VisionTower's feature selection.

    'default' drops exactly the first token; 'full' keeps all tokens.

    Raises:
        ValueError: 'patch' with more than one prefix token (e.g. DINOv2 with registers).
    """
    if select_feature == 'cls_patch' or num_prefix_tokens == 0:
        return 'full'
    if num_prefix_tokens == 1:
        return 'default'
    raise ValueError(
        f"Cannot export vision tower {tower_name or ''} with select_feature='patch' and {num_prefix_tokens} "
        "prefix tokens (CLS + registers): HF Llava's 'default' strategy drops exactly one token and "
        "'full' keeps them all. Train with select_feature='cls_patch' (exports as 'full') or a tower "
        'without register tokens.')


def _check_auto_class(module: nn.Module, config: Any, what: str) -> None:
    """LlavaModel builds its parts with ``AutoModel.from_config``: the class must match ours."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
    model_type = getattr(config, 'model_type', None)
    expected = MODEL_MAPPING_NAMES.get(model_type)
    if expected != type(module).__name__:
        raise ValueError(
            f'Cannot export the {what} {type(module).__name__} (model_type={model_type!r}): '
            f'LlavaForConditionalGeneration builds its {what} with AutoModel.from_config, which gives '
            f'{expected or "no built-in class"}. Supported: LLMs whose base model AutoModel builds '
            '(LLaMA, Qwen2, Mistral, …) and CLIP/SigLIP/DINOv2 vision towers without remote code.')


def _tokenizer_with_image_token(tokenizer: Any, image_token: str) -> tuple[Any, int, bool]:
    """A copy of ``tokenizer`` that has ``image_token`` as one special token; returns (tok, id, added)."""
    from tokenizers import AddedToken
    tokenizer = copy.deepcopy(tokenizer)
    added = image_token not in tokenizer.get_vocab()
    if added:
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
    ids = tokenizer.encode(image_token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f'Tokenizer splits {image_token!r} into {len(ids)} tokens {ids}; it must be one '
                         'special token for HF Llava. Pass a tokenizer where it is, or another `image_token`.')
    return tokenizer, ids[0], added


def _check_image_processor(image_processor: Any, image_size: int) -> None:
    import numpy as np
    from PIL import Image
    probe = Image.fromarray(np.zeros((image_size * 2, image_size + 3, 3), dtype=np.uint8))
    shape = tuple(image_processor(images=probe, return_tensors='pt')['pixel_values'].shape[-2:])
    if shape != (image_size, image_size):
        raise ValueError(f'The image processor {type(image_processor).__name__} outputs {shape[0]}×{shape[1]} '
                         f'images but the vision tower takes {image_size}×{image_size}: the exported '
                         "processor would expand <image> to the wrong count. Pass the tower's own image "
                         'processor.')


def export_llava_to_hf(model: 'LLaVAModel', out_dir: str | os.PathLike, image_processor: Any = None,
                       tokenizer: Any = None, overwrite: bool = False, dtype: str | torch.dtype | None = None,
                       image_token: str = DEFAULT_IMAGE_TOKEN, source_config: str | None = None,
                       source_checkpoint: str | None = None, max_shard_size: str = '5GB',
                       template: Any = None, pad_image_to_square: bool = True) -> Path:
    """Write ``model`` as a transformers ``LlavaForConditionalGeneration`` directory.

    The directory holds ``config.json``, safetensors weights, ``generation_config.json`` (the LLM's,
    with EOS = the template's stop tokens and the pad id), the tokenizer (with ``<image>`` added if
    it was absent), the image processor and a ``LlavaProcessor`` with the model's chat template when
    both are available, and :data:`EXPORT_INFO_NAME` recording the source and the choices made. See
    the module docstring for the mapping and :mod:`mllm_align.models.hf_processor` for the processor.

    The image token: if the tokenizer lacks ``image_token`` it is added (to a copy) as a special
    token; when its id is outside the LLM vocabulary the embedding and LM-head matrices grow
    (``resize_token_embeddings``) and the new rows are set to the mean of the old rows
    (deterministic; the embedding row is never read, image features replace it). Without any
    tokenizer the id is the next free row (``vocab_size``) and no tokenizer is saved.

    Args:
        model: the model to export; not modified (LoRA parts are merged on a copy).
        out_dir: the output directory; created. Written to a temporary sibling, then renamed.
        image_processor: the vision tower's HF image processor; needed for the processor files.
        tokenizer: defaults to ``model.tokenizer``.
        overwrite: replace ``out_dir`` if it holds a previous export (a :data:`EXPORT_INFO_NAME`).
        dtype: parameter dtype of the export; None keeps the LLM's dtype (tower and projector are
            cast to it, since HF Llava runs in one dtype).
        image_token: the image placeholder text.
        source_config, source_checkpoint: recorded in :data:`EXPORT_INFO_NAME`.
        max_shard_size: passed to ``save_pretrained``.
        template: the chat template the model was trained with (a name such as ``'vicuna_v1'`` or
            a ``ChatTemplate``); default ``model.template``. None for both keeps the tokenizer's
            own chat template (with a warning: harness prompts then differ from training).
        pad_image_to_square: training padded images to a square (``LLaVADataset``'s
            ``pad_image_to_square``); the exported image processor then pads too.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: a projector other than ``mlp2x_gelu``; a tower/feature selection HF cannot
            express; an LLM or tower that ``AutoModel.from_config`` does not rebuild; parameters
            outside llm/visual_encoder/projector and the plug-ins; a plug-in with ``exportable = False``; an
            image processor sized for another resolution, or one whose pipeline a
            ``LlavaImageProcessor`` cannot reproduce; a saved processor that does not reproduce
            mllm_align's prompt text, BOS handling, image token count or ``pixel_values``.
        FileExistsError: ``out_dir`` is non-empty and ``overwrite`` is False (or it is not an export).
    """
    from accelerate import init_empty_weights
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite)
    _check_parts(model)
    tower = model.visual_encoder
    strategy = vision_feature_select_strategy(tower.select_feature, tower.num_prefix_tokens,
                                              type(tower.model).__name__)
    projector_state, act, projector_bias = _projector_state(model.projector)
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    template = template if template is not None else model.template
    if template is not None:
        template = get_template(template).name if isinstance(template, str) else get_template(template)
    elif tokenizer is not None:
        print_log('Export without a chat template (neither `template` nor model.template is set): the tokenizer '
                  "keeps its own chat_template, so harness prompts may differ from training. Pass template= "
                  "(tools/convert_to_hf.py reads it from the config's model.template via engine/build.py).",
                  logger='current', level=logging.WARNING)
    training_image_processor = image_processor
    if image_processor is not None:
        _check_image_processor(image_processor, tower.image_size)
        image_processor = llava_image_processor(image_processor, pad_image_to_square, tower.image_size)

    llm, llm_merged = _unwrap_lora(model.language_model)
    vision, vision_merged = _unwrap_lora(tower.model)
    decoder = llm.get_decoder()
    lm_head = llm.get_output_embeddings()
    _check_auto_class(decoder, llm.config, 'language model')
    _check_auto_class(vision, vision.config, 'vision tower')
    out_dtype = resolve_dtype(dtype) if dtype is not None else next(decoder.parameters()).dtype

    old_vocab = llm.config.vocab_size
    if tokenizer is not None:
        tokenizer, image_token_id, added_token = _tokenizer_with_image_token(tokenizer, image_token)
    else:
        image_token_id, added_token = old_vocab, False
        print_log(f'No tokenizer: the image token gets id {image_token_id} (a new row); add {image_token!r} '
                  'at that id to the tokenizer you use with the export.', logger='current', level=logging.WARNING)
    new_vocab = max(old_vocab, image_token_id + 1)

    text_config = copy.deepcopy(llm.config)
    vision_config = copy.deepcopy(vision.config)
    for cfg in (text_config, vision_config):
        cfg.dtype = out_dtype
    vision_config.image_size = tower.image_size  # the input size it was trained at (visual_encoder image_size)
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
        projector_hidden_act=act, vision_feature_select_strategy=strategy,
        vision_feature_layer=tower.select_layer, image_seq_length=tower.num_tokens,
        multimodal_projector_bias=projector_bias,
        tie_word_embeddings=getattr(text_config, 'tie_word_embeddings', False))
    config.dtype = out_dtype
    with init_empty_weights():  # parameters on meta; non-persistent buffers (rotary, ids) real
        hf_model = LlavaForConditionalGeneration(config)

    def load(dst: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
        state = {k: v.detach().to(out_dtype) if v.is_floating_point() else v.detach() for k, v in state.items()}
        try:
            dst.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise ValueError(f'The {what} does not match its LlavaForConditionalGeneration counterpart: '
                             f'{exc}') from exc

    load(hf_model.model.language_model, decoder.state_dict(), 'language model')
    load(hf_model.lm_head, lm_head.state_dict(), 'LM head')
    load(hf_model.model.vision_tower, vision.state_dict(), 'vision tower')
    load(hf_model.model.multi_modal_projector, projector_state, 'projector')
    hf_model.tie_weights()
    if new_vocab > old_vocab:
        _grow_vocab(hf_model, new_vocab)
    hf_model.generation_config = copy.deepcopy(llm.generation_config)
    if tokenizer is not None:
        pad_id = resolve_pad_token_id(llm.config, tokenizer)
        for key, value in generation_token_ids(tokenizer, template, pad_id).items():
            setattr(hf_model.generation_config, key, value)
    hf_model.eval()

    with staged_export_dir(out_dir) as tmp_dir:
        hf_model.save_pretrained(tmp_dir, safe_serialization=True, max_shard_size=max_shard_size)
        chat_template = None if template is None else chat_template_jinja(template, image_token)
        saved = _save_processing(tmp_dir, tokenizer, image_processor, strategy, tower, image_token, chat_template)
        if 'processor' in saved:
            check_processor_contract(tmp_dir, tokenizer, template, training_image_processor, pad_image_to_square,
                                     tower.num_tokens, image_token_id, image_token)
        plugins = export_plugins(model, tmp_dir)
        saved += [entry['name'] for entry in plugins if entry['files']]
        info = dict(
            source_config=None if source_config is None else str(source_config),
            source_checkpoint=None if source_checkpoint is None else str(source_checkpoint),
            format='transformers.LlavaForConditionalGeneration',
            dtype=str(out_dtype).replace('torch.', ''),
            llm=type(decoder).__name__, vision_tower=type(vision).__name__,
            lora_merged=dict(llm=llm_merged, visual_encoder=vision_merged),
            image_token=image_token, image_token_index=image_token_id, image_token_added=added_token,
            vocab_size=dict(before=old_vocab, after=new_vocab), image_seq_length=tower.num_tokens,
            vision_feature_layer=tower.select_layer, vision_feature_select_strategy=strategy,
            select_feature=tower.select_feature, num_prefix_tokens=tower.num_prefix_tokens,
            saved=saved,
            template=None if template is None else (template if isinstance(template, str) else template.name),
            pad_image_to_square=pad_image_to_square,
            generation_eos_token_id=getattr(hf_model.generation_config, 'eos_token_id', None),
            plugins=plugins,
            note=('The processor reproduces training inputs: chat template = the trained template (images '
                  'first, one <image> line each), no automatic BOS, image padding as in training.'),
            versions=_versions())
        (tmp_dir / EXPORT_INFO_NAME).write_text(json.dumps(info, indent=2) + '\n')
    print_log(f'Exported LlavaForConditionalGeneration to {out_dir} ({info["dtype"]}, image token '
              f'{image_token!r}={image_token_id}, {tower.num_tokens} tokens per image, strategy {strategy!r}, '
              f'saved {", ".join(saved)})', logger='current')
    return out_dir


def _grow_vocab(hf_model: nn.Module, new_vocab: int) -> None:
    """Resize embeddings (and an untied head) to ``new_vocab``; new rows = mean of the old rows."""
    old_vocab = hf_model.get_input_embeddings().weight.shape[0]
    hf_model.resize_token_embeddings(new_vocab, mean_resizing=False)
    with torch.no_grad():
        for emb in {id(m): m for m in (hf_model.get_input_embeddings(), hf_model.get_output_embeddings())}.values():
            weight = emb.weight  # (V', D)
            weight[old_vocab:] = weight[:old_vocab].float().mean(0).to(weight.dtype)
            bias = getattr(emb, 'bias', None)
            if bias is not None:
                bias[old_vocab:] = bias[:old_vocab].float().mean().to(bias.dtype)


def _save_processing(out_dir: Path, tokenizer: Any, image_processor: Any, strategy: str, tower: Any,
                     image_token: str, chat_template: str | None) -> list[str]:
    saved = ['model']
    if tokenizer is not None:
        tokenizer = harness_tokenizer(tokenizer, chat_template)
    if tokenizer is not None and image_processor is not None:
        processor = build_llava_processor(tokenizer, image_processor, tokenizer.chat_template,
                                          tower.config.patch_size, strategy, tower.num_prefix_tokens, image_token)
        processor.save_pretrained(out_dir)
        return saved + ['tokenizer', 'image_processor', 'processor']
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
        saved.append('tokenizer')
    if image_processor is not None:
        image_processor.save_pretrained(out_dir)
        saved.append('image_processor')
    print_log('No LlavaProcessor saved: it needs both the tokenizer and the image processor '
              f'(have: {", ".join(saved[1:]) or "neither"}).', logger='current', level=logging.WARNING)
    return saved


def _versions() -> dict[str, str]:
    import transformers
    return dict(torch=torch.__version__, transformers=transformers.__version__)


# ---------------------------------------------------------------------------------------- verification
def expand_image_placeholders(input_ids: torch.Tensor, image_token_id: int, image_seq_length: int) -> torch.Tensor:
    """Replace each ``IMAGE_TOKEN_INDEX`` by ``image_seq_length`` copies of ``image_token_id``.

    ``[T] -> [T - n + n * image_seq_length]`` for a 1-D sequence with n placeholders.
    """
    pieces = [torch.full((image_seq_length,), image_token_id, dtype=input_ids.dtype) if t == IMAGE_TOKEN_INDEX
              else t.view(1) for t in input_ids.cpu()]
    return torch.cat(pieces).to(input_ids.device)


@torch.no_grad()
def compare_logits(model: 'LLaVAModel', hf_dir: str | os.PathLike, pixel_values: torch.Tensor | None = None,
                   input_ids: torch.Tensor | None = None, prompt: str = 'Describe the image in one sentence.',
                   seed: int = 0, hf_model: Any = None) -> float:
    """Max |logit difference| between ``model`` and the export in ``hf_dir`` on one sample.

    The mllm_align model runs ``input_ids`` (with one ``IMAGE_TOKEN_INDEX`` placeholder); the HF
    model runs the same ids with the placeholder expanded to ``image_seq_length`` image tokens.
    Both see the same ``pixel_values``; logits are compared over the original vocabulary (an added
    ``<image>`` row is left out). The export is loaded in the dtype of ``model``'s LLM, so casting
    ``model`` to fp32 first compares a half-precision export in fp32 (weights upcast exactly), which
    separates mapping errors from half-precision kernel noise.

    Args:
        model: the source model (eval mode is set for the call and restored after).
        hf_dir: the exported directory (loaded with ``LlavaForConditionalGeneration.from_pretrained``).
        pixel_values: ``[1, 3, H, W]``; default a seeded random image at the tower's size.
        input_ids: ``[T]`` mllm_align ids with one placeholder; default: BOS (if any), the
            placeholder, then ``prompt`` tokenized by ``model.tokenizer`` (or fixed ids without one).
        prompt: text of the default sample.
        seed: seed of the default image.
        hf_model: an already loaded export (skips loading ``hf_dir``): a plain
            ``LlavaForConditionalGeneration`` (used as it is: attach exported plug-ins to it yourself) or an
            :class:`~mllm_align.models.hf_llava.HFLlavaModel`, whose plug-ins are notified as below. When
            loading here, the plug-ins the export recorded are re-attached (``from_export``).

    With plug-ins, the HF model still runs its own forward (``<image>`` tokens expanded by HF); the
    plug-ins are told the image positions first (``before_llm_pass`` with the spliced inputs, whose
    ``image_mask`` is checked to equal ``input_ids == image_token_index``).

    Returns:
        The maximum absolute logit difference over all positions.
    """
    from transformers import LlavaForConditionalGeneration

    from .hf_llava import HFLlavaModel, attach_exported_plugins

    llm = model.language_model
    device = next(llm.parameters()).device
    tower = model.visual_encoder
    if pixel_values is None:
        gen = torch.Generator().manual_seed(seed)
        size = tower.config.image_size
        pixel_values = torch.randn(1, 3, size, size, generator=gen)
    if input_ids is None:
        input_ids = _default_prompt_ids(model, prompt)
    if int((input_ids == IMAGE_TOKEN_INDEX).sum()) != pixel_values.shape[0]:
        raise ValueError(f'input_ids hold {int((input_ids == IMAGE_TOKEN_INDEX).sum())} image placeholders for '
                         f'{pixel_values.shape[0]} images.')
    wrapper: HFLlavaModel | None = None
    if isinstance(hf_model, HFLlavaModel):
        wrapper, hf_model = hf_model, hf_model.language_model
    elif hf_model is None:
        attn = getattr(model.llm_config, '_attn_implementation', None)
        from ..checkpoint_io import hf_weights_kwargs
        hf_model = LlavaForConditionalGeneration.from_pretrained(
            str(hf_dir), dtype=next(llm.parameters()).dtype,
            attn_implementation=attn if attn in ('eager', 'sdpa') else None, **hf_weights_kwargs(hf_dir))
        hf_model.to(device)
        wrapper = HFLlavaModel(hf_model, template=model.template)
        attach_exported_plugins(wrapper, hf_dir)
        wrapper.to(device)
    hf_model.eval()
    was_training = model.training
    model.eval()
    try:
        data = dict(input_ids=input_ids[None].to(device), pixel_values=pixel_values.to(device))
        ours = model(data, mode='tensor')[0].float()  # (L, V)
    finally:
        model.train(was_training)
    cfg = hf_model.config
    hf_ids = expand_image_placeholders(input_ids, cfg.image_token_index, cfg.image_seq_length)
    hf_dtype = next(hf_model.parameters()).dtype
    if wrapper is not None and wrapper.plugins:
        inputs = wrapper.prepare_inputs(data)
        if not torch.equal(inputs.image_mask[0].cpu(), hf_ids == cfg.image_token_index):
            raise ValueError('The spliced image positions differ from the HF <image> tokens: '
                             f'image_seq_length={cfg.image_seq_length} does not match the tower.')
        wrapper.notify_plugins(inputs)
    theirs = hf_model(input_ids=hf_ids[None].to(device), pixel_values=pixel_values.to(device, hf_dtype),
                      use_cache=False).logits[0].float()  # (L, V')
    if theirs.shape[0] != ours.shape[0]:
        raise ValueError(f'Sequence lengths differ: mllm_align {ours.shape[0]}, HF {theirs.shape[0]}; '
                         f'image_seq_length={cfg.image_seq_length} does not match the tower.')
    return float((ours - theirs[:, :ours.shape[1]]).abs().max())


def _default_prompt_ids(model: 'LLaVAModel', prompt: str) -> torch.Tensor:
    tokenizer = model.tokenizer
    if tokenizer is None:
        vocab = model.llm_config.vocab_size
        text = [i % vocab for i in range(3, 11)]
        bos = []
    else:
        text = tokenizer(prompt, add_special_tokens=False).input_ids
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return torch.tensor(bos + [IMAGE_TOKEN_INDEX] + list(text), dtype=torch.long)
