"""What every HF export of a base shares: the export-info file, plug-in files, an atomically committed directory,
and the whole export of a base that is one HF model (:func:`export_merged_base`).

An export is written into a temporary sibling of ``out_dir`` and renamed into place only when complete
(:func:`staged_export_dir`), so a crash never leaves a half-written model where a loader would read it.
Each plug-in writes what inference needs through the protocol (``AlignPlugin.export_files``) and is
recorded in :data:`EXPORT_INFO_NAME` as ``{"name", "class", "files"}``, which the HF-directory loaders
(``hf_llava.attach_exported_plugins``) read back.

A base whose model is a single HF model with LoRA injected in place (Qwen2-VL, both InternVL formats) exports
through :func:`export_merged_base`: the steps are the same for each (merge, rebuild on the meta device, generation
config, tokenizer with the trained template, plug-ins, export info) and only the model class, the image token of
the chat template and the processing files differ, which the base passes in.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn

    from .base import MultimodalModel

__all__ = ['EXPORT_INFO_NAME', 'apply_umask', 'check_plugins_exportable', 'export_merged_base', 'export_plugins',
           'merged_state_dict', 'plugin_label', 'prepare_out_dir', 'staged_export_dir']

#: Written into every export directory: source, settings, template, plug-ins.
EXPORT_INFO_NAME = 'mllm_align_export.json'


def plugin_label(name: str, plugin: Any) -> str:
    """``model.plugins.<name> (<Class>(<extra_repr>))`` for messages."""
    extra = plugin.extra_repr() if hasattr(plugin, 'extra_repr') else ''
    return f'model.plugins.{name} ({type(plugin).__name__}({extra}))'


def check_plugins_exportable(model: 'MultimodalModel', target: str) -> None:
    """Raise ``ValueError`` naming the first plug-in with ``exportable = False`` (``target``: the HF class)."""
    for name, plugin in model.plugins.items():
        if not getattr(plugin, 'exportable', True):
            raise ValueError(f'{plugin_label(name, plugin)} cannot be exported: it changes what the model computes '
                             f'and {target} cannot compute that. Evaluate this model with mllm_align instead '
                             '(e.g. tools/eval_mir.py --config).')


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Check ``out_dir`` may receive an export: absent, empty, or (with ``overwrite``) a previous export.

    Raises:
        FileExistsError: a file; a non-empty directory without ``overwrite``; a non-empty directory that
            holds no :data:`EXPORT_INFO_NAME` (not an export: never replaced).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f'Output path {str(out_dir)!r} exists and is not a directory.')
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f'Output directory {str(out_dir)!r} is not empty: choose a new directory or '
                                  'pass overwrite=True (--overwrite) to replace a previous export.')
        if not (out_dir / EXPORT_INFO_NAME).is_file():
            raise FileExistsError(f'Refusing to overwrite {str(out_dir)!r}: it is not empty and holds no '
                                  f'{EXPORT_INFO_NAME}, so it is not a previous export. Remove it yourself or '
                                  'choose another directory.')


def export_plugins(model: 'MultimodalModel', out_dir: Path) -> list[dict[str, Any]]:
    """Each plug-in's ``export_files`` into ``out_dir``, in order: ``[{name, class, files}]`` for the export info.

    Raises:
        RuntimeError: a plug-in reported a file it did not write.
    """
    entries = []
    for name, plugin in model.plugins.items():
        files = list(plugin.export_files(model, out_dir))
        missing = [f for f in files if not (out_dir / f).is_file()]
        if missing:
            raise RuntimeError(f'{plugin_label(name, plugin)}.export_files reported {missing}, which it did not '
                               f'write into {out_dir}.')
        cls = type(plugin)
        entries.append(dict(name=name, **{'class': f'{cls.__module__}.{cls.__qualname__}'}, files=files))
    return entries


def apply_umask(directory: Path) -> None:
    """Give ``directory``, its sub-directories and files the modes the umask allows.

    ``tempfile.mkdtemp`` (and some writers) create private (0700 / 0600) entries; a directory renamed into
    place from a temporary one should look as if it had been written in place.
    """
    mask = os.umask(0)
    os.umask(mask)
    for root, dirs, files in os.walk(directory):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextlib.contextmanager
def staged_export_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` to write into; on success it replaces ``out_dir`` (a previous
    export there is removed first), on any error it is deleted and ``out_dir`` is left as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f'.{out_dir.name}.', suffix='.tmp'))
    try:
        yield tmp_dir
        apply_umask(tmp_dir)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------- one-model bases
def merged_state_dict(module: 'nn.Module') -> dict[str, 'torch.Tensor']:
    """``module``'s state dict with every injected LoRA layer merged: W = W₀ + (α/r)·B·A, peft keys removed.

    The module itself is not changed.
    """
    from peft.tuners.lora import LoraLayer

    state = {}
    for key, value in module.state_dict().items():
        if '.lora_' in key:
            continue
        state[key.replace('.base_layer.', '.')] = value
    for name, layer in module.named_modules():
        if isinstance(layer, LoraLayer):
            weight = state[f'{name}.weight']
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
            state[f'{name}.weight'] = weight
    return state


def _merged_model(vlm: 'nn.Module', model_class: type, out_dtype: 'torch.dtype', model_kwargs: Mapping[str, Any],
                  config_updates: Mapping[str, Any]) -> 'nn.Module':
    """A fresh ``model_class`` (built on the meta device) holding ``vlm``'s merged weights in ``out_dtype``.

    Every parameter and buffer of the new model must be filled by a merged tensor (tied ones through
    ``tie_weights``) and every merged tensor must find its place, so no weight is dropped or left random.
    """
    from accelerate import init_empty_weights

    state = {k: (v.detach().to(out_dtype) if v.is_floating_point() else v.detach())
             for k, v in merged_state_dict(vlm).items()}
    config = copy.deepcopy(vlm.config)
    config.dtype = out_dtype
    for cfg in (config, getattr(config, 'text_config', None), getattr(config, 'llm_config', None)):
        if cfg is not None:
            cfg.use_cache = True  # generation wants the cache; training may have switched it off
    for key, value in config_updates.items():
        setattr(config, key, value)
    with init_empty_weights():
        hf_model = model_class(config, **model_kwargs)
    _, unexpected = hf_model.load_state_dict(state, strict=False, assign=True)
    hf_model.tie_weights()
    empty = [n for n, t in [*hf_model.named_parameters(), *hf_model.named_buffers()] if t.is_meta]
    if unexpected or empty:
        raise RuntimeError(f'The merged weights of {type(vlm).__name__} do not fit a new {model_class.__name__}: '
                           f'left empty {sorted(empty)[:5]}, unexpected {sorted(unexpected)[:5]}. This is a bug of '
                           'the export: please report it with the model directory\'s config.json.')
    return hf_model.eval()


def _generation_config(vlm: 'nn.Module') -> Any:
    """``vlm``'s generation config; for a model that cannot generate (remote-code InternVL, which has its own
    ``chat``), its directory's ``generation_config.json``, else a default one."""
    from transformers import GenerationConfig

    generation = getattr(vlm, 'generation_config', None)
    if generation is not None:
        return copy.deepcopy(generation)
    source = Path(getattr(vlm, 'name_or_path', '') or '.')
    if (source / 'generation_config.json').is_file():
        return GenerationConfig.from_pretrained(str(source))
    return GenerationConfig()


def export_merged_base(model: 'MultimodalModel', vlm: 'nn.Module', out_dir: str | os.PathLike, model_class: type, *,
                       info: Mapping[str, Any], chat_image_token: str,
                       save_extra: Callable[[Path], list[str]] | None = None,
                       model_kwargs: Mapping[str, Any] | None = None, config_updates: Mapping[str, Any] | None = None,
                       overwrite: bool = False, dtype: Any = None, template: Any = None,
                       source_config: str | None = None, source_checkpoint: str | None = None,
                       max_shard_size: str = '5GB') -> Path:
    """Write the base ``model``, whose weights are all in the HF model ``vlm``, as a ``model_class`` directory.

    What is written, in a temporary sibling of ``out_dir`` renamed into place when complete:

    * the weights (safetensors, ``max_shard_size`` shards) of ``model_class(config, **model_kwargs)`` built on the
      meta device from a copy of ``vlm.config`` (``use_cache`` on, ``dtype``, ``config_updates`` set) and given
      ``vlm``'s state with every LoRA layer merged (W = W₀ + (α/r)·B·A), so the export needs no peft and
      its logits equal the trained model's; ``config.json`` (and, for a remote-code class that
      transformers loaded through an auto class, the class's own modules, which its ``save_pretrained`` copies);
    * ``generation_config.json``: ``vlm``'s (:func:`_generation_config`) with EOS = the template's stop tokens, as
      ``predict`` stops, and the pad id;
    * the tokenizer with the trained chat template as Jinja, an image written as ``chat_image_token``, no
      automatic BOS/EOS (``hf_processor.harness_tokenizer``), so harness prompts equal the training text;
    * ``save_extra(tmp_dir)``: the base's own processing or code files; it returns the names it adds to ``saved``;
    * each plug-in's files (:func:`export_plugins`) and :data:`EXPORT_INFO_NAME`: ``info`` (``format``, ``base``
      and the base's own keys) plus the source, dtype, merged LoRA parts, template, plug-ins, what was saved and
      the library versions.

    ``model`` and ``vlm`` are not modified.

    Raises:
        ValueError: a plug-in that cannot be exported (``exportable`` False).
        FileExistsError: ``out_dir`` is not empty and not a previous export, or ``overwrite`` is False.
        RuntimeError: the merged weights do not fill ``model_class`` exactly.
    """
    import torch
    import transformers
    from mmengine.logging import print_log

    from ..data.hf_chat_template import chat_template_jinja
    from ..data.templates import get_template
    from .builders import resolve_dtype
    from .hf_processor import generation_token_ids, harness_tokenizer

    check_plugins_exportable(model, model_class.__name__)
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite)
    template = template if template is not None else model.template
    template_name = None if template is None else get_template(template).name
    out_dtype = resolve_dtype(dtype) if dtype is not None else next(vlm.parameters()).dtype
    hf_model = _merged_model(vlm, model_class, out_dtype, model_kwargs or {}, config_updates or {})
    generation = _generation_config(vlm)
    tokenizer = model.tokenizer
    if tokenizer is not None:
        for key, value in generation_token_ids(tokenizer, template_name, model.pad_token_id).items():
            setattr(generation, key, value)
    hf_model.generation_config = generation
    with staged_export_dir(out_dir) as tmp_dir:
        hf_model.save_pretrained(tmp_dir, safe_serialization=True, max_shard_size=max_shard_size)
        if not (tmp_dir / 'generation_config.json').is_file():  # save_pretrained skips it for non-generating models
            generation.save_pretrained(tmp_dir)
        saved = ['model']
        if tokenizer is not None:
            chat = None if template_name is None else chat_template_jinja(template_name, chat_image_token)
            harness_tokenizer(tokenizer, chat).save_pretrained(tmp_dir)
            saved.append('tokenizer')
        if save_extra is not None:
            saved += save_extra(tmp_dir)
        plugins = export_plugins(model, tmp_dir)
        record = dict(info)
        record.update(source_config=None if source_config is None else str(source_config),
                      source_checkpoint=None if source_checkpoint is None else str(source_checkpoint),
                      dtype=str(out_dtype).replace('torch.', ''),
                      lora_merged=sorted(getattr(model, 'lora_targets', {})), template=template_name, plugins=plugins,
                      saved=saved,
                      versions=dict(torch=torch.__version__, transformers=transformers.__version__))
        (tmp_dir / EXPORT_INFO_NAME).write_text(json.dumps(record, indent=2) + '\n')
    print_log(f'Exported {record.get("format", model_class.__name__)} to {out_dir} ({record["dtype"]}, template '
              f'{template_name!r}, plug-ins {[p["name"] for p in plugins]})', logger='current', level=logging.INFO)
    return out_dir
