"""The ``LlavaProcessor`` of an HF export, made to reproduce mllm_align's inputs for evaluation harnesses.

lmms-eval's ``llava_hf`` and VLMEvalKit drive an exported ``LlavaForConditionalGeneration`` as::

    processor = AutoProcessor.from_pretrained(d)
    model = LlavaForConditionalGeneration.from_pretrained(d)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)   # or the tokenizer's
    inputs = processor(images=images, text=prompt, return_tensors='pt')
    out = model.generate(**inputs, max_new_tokens=…)
    answer = processor.batch_decode(out[:, inputs['input_ids'].shape[1]:], skip_special_tokens=True)

For that to give the trained model's inputs, the export's processing files are built here:

* chat template: the model's mllm_align template as Jinja
  (:func:`mllm_align.data.hf_chat_template.chat_template_jinja`), on both the processor and the
  tokenizer; ``{"type": "image"}`` items become ``<image>`` where LLaVA data puts them (first, one
  line each);
* tokenizer: never adds special tokens itself (the template writes BOS where training did; a
  tokenizer that also prepends BOS would double it), and returns only ``input_ids`` and
  ``attention_mask`` (no ``token_type_ids``, which ``generate`` rejects);
* image processor: a ``LlavaImageProcessor`` with ``do_pad=True`` when training padded images to
  a square with the processor mean (:func:`mllm_align.data.image_processing.process_images`), with
  the training processor's resize / crop / rescale / normalisation; without padding, the training
  processor itself;
* ``patch_size``, ``vision_feature_select_strategy`` and ``num_additional_image_tokens`` so that
  ``<image>`` expands to as many tokens as the tower gives features.

:func:`check_processor_contract` loads the saved directory back and checks all of it against
mllm_align's own prompt building and image processing.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any

import numpy as np
import torch
from mmengine.logging import print_log

from ..constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

__all__ = ['llava_image_processor', 'harness_tokenizer', 'build_llava_processor', 'generation_token_ids',
           'check_processor_contract', 'PROBE_QUESTION']

MODEL_INPUT_NAMES = ['input_ids', 'attention_mask']
PROBE_QUESTION = 'What is in the image? Answer in one word.'
_IMAGE_KEYS = ('do_resize', 'size', 'resample', 'do_center_crop', 'crop_size', 'do_rescale', 'rescale_factor',
               'do_normalize', 'image_mean', 'image_std', 'do_convert_rgb')
_TEMPLATE_POST_PROCESSORS = ('TemplateProcessing', 'BertProcessing', 'RobertaProcessing')


# ---------------------------------------------------------------------------------------- images
def _probe_images(image_size: int) -> list[Any]:
    """A landscape, a portrait and a square random image (the pad and crop paths all run)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    shapes = [(image_size + 5, 2 * image_size + 3), (2 * image_size + 1, image_size), (image_size, image_size)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def llava_image_processor(image_processor: Any, pad_to_square: bool = True, image_size: int | None = None) -> Any:
    """The image processor an export saves, giving the ``pixel_values`` training gave.

    Args:
        image_processor: the training image processor (CLIP, SigLIP, BitImageProcessor, …).
        pad_to_square: training padded images to a square with the processor mean
            (``LLaVADataset(pad_image_to_square=True)``, LLaVA-1.5's ``'pad'``); HF's own
            processors do not, ``LlavaImageProcessor(do_pad=True)`` does the same.
        image_size: the vision tower's input size (the crop size recorded when the processor does
            not crop, so ``LlavaProcessor`` computes the right number of image tokens).

    Returns:
        ``image_processor`` itself without padding, else a ``LlavaImageProcessor`` with its settings.

    Raises:
        ValueError: the ``LlavaImageProcessor`` does not reproduce ``process_images`` on probe
            images (a processor with steps of its own): export with the training processor and
            pad images yourself, or train without padding.
    """
    if not pad_to_square:
        return image_processor
    from transformers import LlavaImageProcessor

    from ..data.image_processing import process_images

    settings = {k: copy.deepcopy(getattr(image_processor, k)) for k in _IMAGE_KEYS if hasattr(image_processor, k)}
    if not settings.get('do_center_crop', False) and image_size is not None:
        settings['do_center_crop'] = False
        settings['crop_size'] = {'height': image_size, 'width': image_size}
    settings.setdefault('do_convert_rgb', True)
    llava = LlavaImageProcessor(do_pad=True, **settings)
    for k, probe in enumerate(_probe_images(image_size or 32)):
        ours = process_images([probe], image_processor, pad_to_square=True)
        theirs = torch.as_tensor(np.asarray(llava(images=probe, return_tensors='np')['pixel_values']))
        if ours.shape != theirs.shape or not torch.allclose(ours, theirs, atol=1e-5, rtol=0):
            diff = (float((ours - theirs).abs().max()) if ours.shape == theirs.shape
                    else f'shape {tuple(theirs.shape)} vs {tuple(ours.shape)}')
            raise ValueError(
                f'Cannot express the training image pipeline (pad to square, then '
                f'{type(image_processor).__name__}) as a LlavaImageProcessor: probe image {k} differs '
                f'({diff}). Export with pad_image_to_square=False to save {type(image_processor).__name__} '
                'as it is (harnesses then see unpadded images), or pass an image processor that '
                'LlavaImageProcessor can reproduce (resize, centre crop, rescale, normalise).')
    return llava


# ---------------------------------------------------------------------------------------- tokenizer
def _strip_template_processing(node: dict | None) -> dict | None:
    """A post-processor JSON without the parts that insert special tokens (None if nothing is left)."""
    if node is None or node.get('type') in _TEMPLATE_POST_PROCESSORS:
        return None
    if node.get('type') == 'Sequence':
        kept = [p for p in (_strip_template_processing(q) for q in node['processors']) if p is not None]
        return dict(node, processors=kept) if kept else None
    return node


def _adds_special_tokens(tokenizer: Any) -> bool:
    probe = 'a b'
    return list(tokenizer(probe).input_ids) != list(tokenizer(probe, add_special_tokens=False).input_ids)


def harness_tokenizer(tokenizer: Any, chat_template: str | None) -> Any:
    """A copy of ``tokenizer`` as harnesses need it: no automatic BOS/EOS, no ``token_type_ids``.

    Args:
        tokenizer: the training tokenizer (already holding the image token).
        chat_template: Jinja template to set (None keeps the tokenizer's).

    Raises:
        ValueError: special tokens are still added after switching them off (an unknown
            tokenizer type).
    """
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.model_input_names = list(MODEL_INPUT_NAMES)
    tokenizer.init_kwargs['model_input_names'] = list(MODEL_INPUT_NAMES)
    for flag in ('add_bos_token', 'add_eos_token'):
        if flag in tokenizer.init_kwargs or isinstance(getattr(type(tokenizer), flag, None), property):
            try:
                setattr(tokenizer, flag, False)  # LlamaTokenizer(Fast), GemmaTokenizer…: rebuilds the post-processor
            except AttributeError:  # a read-only property
                pass
            tokenizer.init_kwargs[flag] = False
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if _adds_special_tokens(tokenizer) and backend is not None:
        from tokenizers import Tokenizer, processors
        state = json.loads(backend.to_str())
        node = _strip_template_processing(state.get('post_processor'))
        if node is None:
            backend.post_processor = processors.TemplateProcessing(single='$A', pair='$A $B')
        else:
            state['post_processor'] = node
            backend.post_processor = Tokenizer.from_str(json.dumps(state)).post_processor
    if _adds_special_tokens(tokenizer):
        raise ValueError(f'{type(tokenizer).__name__} still adds special tokens with add_special_tokens=True after '
                         'switching them off; the chat template writes BOS itself, so the export would start '
                         'prompts with two. Export with a fast tokenizer (tokenizer.json).')
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


# ---------------------------------------------------------------------------------------- processor
def build_llava_processor(tokenizer: Any, image_processor: Any, chat_template: str | None, patch_size: int,
                          vision_feature_select_strategy: str, num_prefix_tokens: int,
                          image_token: str = DEFAULT_IMAGE_TOKEN) -> Any:
    """The ``LlavaProcessor`` of an export (tokenizer from :func:`harness_tokenizer`, image processor
    from :func:`llava_image_processor`); ``<image>`` expands to ``(H/p)·(W/p) + num_prefix_tokens``
    tokens, minus one for the 'default' strategy."""
    from transformers import LlavaProcessor
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy=vision_feature_select_strategy,
                          num_additional_image_tokens=num_prefix_tokens, image_token=image_token,
                          chat_template=chat_template)


def generation_token_ids(tokenizer: Any, template: Any, pad_token_id: int) -> dict[str, Any]:
    """``generation_config`` ids: EOS = the template's stop tokens (as ``LLaVAModel.predict`` stops), pad, BOS.

    ``template`` is a name, a ``ChatTemplate`` or None (EOS = the tokenizer's).
    """
    if template is not None:
        from ..data.templates import get_template
        eos: Any = get_template(template).stop_token_ids(tokenizer)
    else:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: dict[str, Any] = dict(pad_token_id=int(pad_token_id))
    if eos:
        ids['eos_token_id'] = eos[0] if len(eos) == 1 else eos
    if getattr(tokenizer, 'bos_token_id', None) is not None:
        ids['bos_token_id'] = tokenizer.bos_token_id
    return ids


def _first_difference(a: list[int], b: list[int]) -> str:
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f'first difference at position {k}: {a[k:k + 5]} vs {b[k:k + 5]} (lengths {len(a)}, {len(b)})'


def check_processor_contract(out_dir: str | os.PathLike, tokenizer: Any, template: Any, image_processor: Any,
                             pad_to_square: bool, image_seq_length: int, image_token_id: int,
                             image_token: str = DEFAULT_IMAGE_TOKEN) -> None:
    """Load the saved processor from ``out_dir`` and check it against mllm_align on a probe.

    Checked: ``apply_chat_template`` of ``[image, text]`` content renders mllm_align's generation
    prompt text (:func:`~mllm_align.data.templates.render_conversation`); ``processor(images, text)``
    returns only ``input_ids``, ``attention_mask`` and ``pixel_values``; the ids equal
    ``build_generation_prompt``'s with each placeholder expanded to ``image_seq_length`` image
    tokens (so no second BOS); ``pixel_values`` equal ``process_images`` of the training processor.

    Args:
        out_dir: the export directory (or its temporary twin).
        tokenizer: the training tokenizer (with the image token).
        template: the mllm_align template the model was trained with (None: nothing to compare
            the prompt with; only the image and input-name checks run).
        image_processor: the training image processor.
        pad_to_square: training's padding mode.
        image_seq_length: image tokens per image (the tower's feature count).
        image_token_id, image_token: the image token of the export.

    Raises:
        ValueError: naming the first check that fails.
    """
    from transformers import AutoProcessor

    from ..data.hf_chat_template import messages_to_conversation
    from ..data.image_processing import process_images
    from ..data.templates import build_generation_prompt, render_conversation

    processor = AutoProcessor.from_pretrained(str(out_dir))
    where = f'The exported processor in {out_dir}'
    image = _probe_images(getattr(processor.image_processor, 'crop_size', {}).get('height', 32))[0]
    messages = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': PROBE_QUESTION}]}]
    if template is not None:
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        expected = render_conversation(messages_to_conversation(messages, image_token), tokenizer, template,
                                       add_generation_prompt=True)
        if prompt != expected:
            raise ValueError(f'{where} renders {prompt!r} for an [image, text] message, but mllm_align\'s '
                             f'{template!r} template gives {expected!r}.')
    else:
        prompt = f'{image_token}\n{PROBE_QUESTION}'
    inputs = processor(images=image, text=prompt, return_tensors='pt')
    if set(inputs.keys()) != {'input_ids', 'attention_mask', 'pixel_values'}:
        raise ValueError(f'{where} returns {sorted(inputs.keys())}; generate(**inputs) needs exactly input_ids, '
                         'attention_mask and pixel_values.')
    ids = inputs['input_ids'][0].tolist()
    if ids.count(image_token_id) != image_seq_length:
        raise ValueError(f'{where} expands {image_token!r} to {ids.count(image_token_id)} tokens but the vision '
                         f'tower gives {image_seq_length} features per image.')
    ours_pixels = process_images([image], image_processor, pad_to_square)
    if not torch.allclose(inputs['pixel_values'].float(), ours_pixels, atol=1e-5, rtol=0):
        raise ValueError(f'{where} gives other pixel_values than training (process_images with '
                         f'pad_to_square={pad_to_square}).')
    if template is None:
        return
    conv = messages_to_conversation(messages, image_token)
    expected_ids = []
    for t in build_generation_prompt(conv, tokenizer, template):
        expected_ids.extend([image_token_id] * image_seq_length if t == IMAGE_TOKEN_INDEX else [t])
    if ids != expected_ids:
        bos = getattr(tokenizer, 'bos_token_id', None)
        double = bos is not None and ids[:2] == [bos, bos]
        message = (f'{where} tokenizes the {template!r} generation prompt differently from mllm_align '
                   f'({_first_difference(ids, expected_ids)})'
                   + ('; it starts with two BOS tokens.' if double else '.'))
        if double:
            raise ValueError(message)
        print_log(message + ' The tokenizer splits text at special tokens differently from mllm_align\'s '
                  'segment-wise encoding; harness scores may differ slightly from mllm_align\'s.',
                  logger='current', level=logging.WARNING)

