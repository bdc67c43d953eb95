"""A transformers model directory as a :class:`~mllm_align.models.base.MultimodalModel` (what MIR and the
evaluation runner score), the registry of HF-directory loaders, and plug-in re-attachment from an export.

* :class:`HFLlavaModel` wraps a ``LlavaForConditionalGeneration`` directory (e.g. one written by
  ``tools/convert_to_hf.py``): mllm_align prompt ids with one ``IMAGE_TOKEN_INDEX`` placeholder per image
  are spliced with HF's own image features (``get_image_features``: vision tower, feature layer and
  strategy, projector), which is what ``LlavaForConditionalGeneration.forward`` does with
  ``image_seq_length`` ``<image>`` tokens, without needing the expanded ids.
* **Loader registry** (:func:`register_hf_dir_loader`, :func:`load_hf_dir`): HF ``model_type`` (the
  directory's ``config.json``) → a function that loads such a directory as a ``MultimodalModel``.
  ``llava`` → :meth:`HFLlavaModel.from_pretrained` is built in; another base registers its own
  (``register_hf_dir_loader('qwen2_vl', Qwen2VLModel.from_hf_dir)``), and the evaluation runner and
  ``tools/eval_mir.py`` then accept its directories. The InternVL loaders are registered here by dotted path
  (``internvl``, ``internvl_chat``), so they work before (and without) anything imports their module.
* **Remote code is opt-in** (:func:`check_remote_code_trusted`): a directory whose ``config.json`` has an
  ``auto_map`` and which ships ``*.py`` files (a remote-code InternVL2 export) runs that code when loaded, so
  :func:`load_hf_dir` refuses it unless the caller passes ``trust_remote_code=True`` (or, for the tools,
  ``--trust-remote-code``, which sets :data:`TRUST_REMOTE_CODE_ENV` for every process), and then hands the flag
  to the loader of its ``model_type``.
* **Plug-ins of an export** (:func:`attach_exported_plugins`): an export records its plug-ins in
  :data:`EXPORT_INFO_NAME` (``"plugins": [{"name": "moca", "class": "mllm_align.align.moca.MoCa",
  "files": [...]}]``, written by each plug-in's ``export_files``). The loader imports each class by its
  dotted path and calls ``cls.from_export(model, directory)``; the plug-in then sits under its name
  (``model.moca``) and runs before every LLM pass as in training. No plug-in is named here.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from mmengine.logging import print_log
from torch import nn

from ..checkpoint_io import hf_weights_kwargs
from .base import MultimodalModel
from .export_dir import EXPORT_INFO_NAME
from .plugin import AlignPlugin
from .splice import MultimodalInputs, splice_image_features

__all__ = ['EXPORT_INFO_NAME', 'HFDirLoader', 'HFLlavaModel', 'TRUST_REMOTE_CODE_ENV', 'attach_exported_plugins',
           'check_remote_code_trusted', 'hf_dir_model_type', 'load_hf_dir', 'read_export_info',
           'register_hf_dir_loader', 'registered_hf_model_types']

#: ``loader(path, *, template=None, dtype=None, device='cpu') -> MultimodalModel``; a loader of directories that
#: ship modelling code also takes ``trust_remote_code`` (passed only for such a directory, always True).
HFDirLoader = Callable[..., MultimodalModel]


# ---------------------------------------------------------------------------------------------
# Export info and plug-ins
# ---------------------------------------------------------------------------------------------
def read_export_info(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The content of ``directory/mllm_align_export.json``, or None when the directory has none.

    Raises:
        ValueError: the file is not valid JSON (naming it).
    """
    path = Path(directory) / EXPORT_INFO_NAME
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f'{path} is not valid JSON ({exc.msg}); re-export with tools/convert_to_hf.py.') from exc
    if not isinstance(info, dict):
        raise ValueError(f'{path} holds a {type(info).__name__}, expected an object; re-export with '
                         'tools/convert_to_hf.py.')
    return info


def _import_class(dotted: str, where: str) -> type:
    module_name, _, qualname = dotted.rpartition('.')
    if not module_name:
        raise ValueError(f'{where}: class {dotted!r} is not a dotted path (package.module.Class).')
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f'{where}: cannot import {module_name!r} for plug-in class {dotted!r} ({exc}); install '
                         'the mllm_align version that wrote the export.') from exc
    for part in qualname.split('.'):
        if not hasattr(obj, part):
            raise ValueError(f'{where}: {module_name!r} has no {qualname!r} (plug-in class {dotted!r}); the export '
                             'was written by another mllm_align version.')
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, AlignPlugin)):
        raise ValueError(f'{where}: {dotted!r} is not an AlignPlugin subclass.')
    return obj


def attach_exported_plugins(model: MultimodalModel, directory: str | os.PathLike,
                            info: dict[str, Any] | None = None) -> list[str]:
    """Re-attach the plug-ins an export recorded, in their recorded order; returns their names.

    Each entry of ``info['plugins']`` (``{"name", "class", "files"}``) is rebuilt by
    ``cls.from_export(model, directory)`` and added with ``model.add_plugin(name, plugin)``, which
    attaches it as for a plug-in built from a config. An entry whose files are missing from the
    directory is an error (the model would run without it); ``from_export`` returning None skips it.

    Args:
        model: the loaded export (a ``MultimodalModel`` with no plug-ins of those names yet).
        directory: the export directory.
        info: its export info (default: read from ``directory``).

    Raises:
        ValueError: a malformed entry, a class that cannot be imported or is not an ``AlignPlugin``,
            or an export written before plug-ins were recorded (a top-level ``moca`` entry).
    """
    directory = Path(directory)
    info = read_export_info(directory) if info is None else info
    if not info:
        return []
    where = str(directory / EXPORT_INFO_NAME)
    entries = info.get('plugins')
    if entries is None:
        legacy = [k for k in ('moca',) if info.get(k)]  # the one plug-in older exports carried
        if legacy:
            raise ValueError(f'{where} was written by an older mllm_align (a top-level {legacy[0]!r} entry, no '
                             '"plugins" list): re-export the checkpoint with tools/convert_to_hf.py so its plug-ins '
                             'are recorded.')
        return []
    if not isinstance(entries, list):
        raise ValueError(f'{where}: "plugins" must be a list of {{"name", "class", "files"}} objects.')
    attached = []
    for entry in entries:
        if not isinstance(entry, dict) or not {'name', 'class'} <= set(entry):
            raise ValueError(f'{where}: plug-in entry {entry!r} needs "name" and "class".')
        name, files = str(entry['name']), list(entry.get('files') or [])
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:  # running without it would score another model than the one trained
            raise FileNotFoundError(f'{directory}: plug-in {name!r} ({entry["class"]}) is recorded in '
                                    f'{EXPORT_INFO_NAME} but its files {missing} are missing. Copy them back from '
                                    'the original export or export the checkpoint again (tools/convert_to_hf.py).')
        cls = _import_class(str(entry['class']), f'{where} plug-in {name!r}')
        plugin = cls.from_export(model, directory)
        if plugin is None:
            continue
        if not isinstance(plugin, AlignPlugin):
            raise TypeError(f'{entry["class"]}.from_export returned a {type(plugin).__name__}, not an AlignPlugin.')
        model.add_plugin(name, plugin)  # attaches it, as for a plug-in built from a config
        attached.append(name)
        print_log(f'{directory}: plug-in {name!r} ({type(plugin).__name__}) re-attached from the export.',
                  logger='current')
    return attached


# ---------------------------------------------------------------------------------------------
# The loader registry
# ---------------------------------------------------------------------------------------------
# model_type → loader, or a 'package.module:attribute.path' string resolved at first use (no import
# of every base at start-up). `mllm_align.models` imports qwen2_vl, which registers itself; InternVL's module is
# not imported there (import time), so its loader is named here.
_HF_DIR_LOADERS: dict[str, HFDirLoader | str] = {
    'llava': 'mllm_align.models.hf_llava:HFLlavaModel.from_pretrained',
    'internvl': 'mllm_align.models.internvl:load_internvl_dir',
    'internvl_chat': 'mllm_align.models.internvl:load_internvl_dir',
}


def register_hf_dir_loader(model_type: str, loader: HFDirLoader | str, overwrite: bool = False) -> None:
    """Let :func:`load_hf_dir` (the evaluation runner, ``tools/eval_mir.py``) load ``model_type`` directories.

    Args:
        model_type: the ``model_type`` of the directory's ``config.json`` (e.g. ``'qwen2_vl'``).
        loader: ``loader(path, *, template=None, dtype=None, device='cpu') -> MultimodalModel``: loads the
            directory, its tokenizer and processor, and re-attaches exported plug-ins
            (:func:`attach_exported_plugins`); ``template`` None means "from the export info". May be a
            ``'package.module:attr'`` string, imported at first use.
        overwrite: replace an existing registration (otherwise a different one is an error).

    Raises:
        ValueError: ``model_type`` already has another loader and ``overwrite`` is False.
    """
    old = _HF_DIR_LOADERS.get(model_type)
    if old is not None and old is not loader and old != loader and not overwrite:
        raise ValueError(f'HF model_type {model_type!r} already has a loader ({old!r}); pass overwrite=True to '
                         'replace it.')
    _HF_DIR_LOADERS[model_type] = loader


def registered_hf_model_types() -> list[str]:
    """The ``model_type`` values :func:`load_hf_dir` can load."""
    return sorted(_HF_DIR_LOADERS)


def hf_dir_model_type(path: str | os.PathLike) -> str | None:
    """The ``model_type`` in ``path/config.json``, or None when ``path`` is not an HF model directory."""
    config = Path(path) / 'config.json'
    if not config.is_file():
        return None
    try:
        model_type = json.loads(config.read_text()).get('model_type')
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return model_type if isinstance(model_type, str) else None


TRUST_REMOTE_CODE_ENV = 'MLLM_ALIGN_TRUST_REMOTE_CODE'
"""Set to ``1`` (the tools' ``--trust-remote-code``): :func:`load_hf_dir` called without ``trust_remote_code`` allows
directories that ship modelling code, as the checkpoint loaders' ``MLLM_ALIGN_TRUST_CHECKPOINT`` does for pickles."""


def resolve_trust_remote_code(trust_remote_code: bool | None) -> bool:
    """A loader's ``trust_remote_code`` argument: as given, or (None) whether :data:`TRUST_REMOTE_CODE_ENV` is ``1``."""
    return os.environ.get(TRUST_REMOTE_CODE_ENV) == '1' if trust_remote_code is None else bool(trust_remote_code)


def check_remote_code_trusted(path: str | os.PathLike, trust_remote_code: bool) -> bool:
    """Whether the HF directory ``path`` ships modelling code, refused unless ``trust_remote_code``.

    Remote code = a ``config.json`` ``auto_map`` and ``*.py`` files beside it (what
    ``AutoModel.from_pretrained(path, trust_remote_code=True)`` would import and run). ``trust_remote_code`` is a
    permission: True for a directory without code changes nothing.

    Raises:
        ValueError: the directory ships code and ``trust_remote_code`` is False (naming the files and the fix).
    """
    directory = Path(path)
    try:
        auto_map = json.loads((directory / 'config.json').read_text()).get('auto_map') or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    code = sorted(p.name for p in directory.glob('*.py'))
    if not (auto_map and code):
        return False
    if not trust_remote_code:
        raise ValueError(f'{str(directory)!r} ships its own modelling code (config.json auto_map {sorted(auto_map)}; '
                         f'files {code}), which loading it would run. If you trust that code, pass '
                         'trust_remote_code=True: load_hf_dir(path, trust_remote_code=True), '
                         'load_colva_export(path, trust_remote_code=True) or load_internvl_dir(path, '
                         'trust_remote_code=True); with the tools, --trust-remote-code.')
    return True


def _resolve_loader(loader: HFDirLoader | str) -> HFDirLoader:
    if callable(loader):
        return loader
    module_name, _, attr = loader.partition(':')
    obj: Any = importlib.import_module(module_name)
    for part in attr.split('.'):
        obj = getattr(obj, part)
    return obj


def load_hf_dir(path: str | os.PathLike, *, template: str | None = None, dtype: torch.dtype | str | None = None,
                device: str | torch.device = 'cpu', trust_remote_code: bool | None = None) -> MultimodalModel:
    """Load an HF model directory as a ``MultimodalModel`` with the loader registered for its ``model_type``.

    ``trust_remote_code``: allow a directory that ships modelling code (:func:`check_remote_code_trusted`); its
    loader then gets ``trust_remote_code=True``. None: allowed when :data:`TRUST_REMOTE_CODE_ENV` is ``1``.

    Raises:
        ValueError: not an HF directory (no ``config.json``); no loader for its ``model_type``; modelling code in
            the directory without ``trust_remote_code``, or a loader that cannot take it.
    """
    model_type = hf_dir_model_type(path)
    if model_type is None:
        raise ValueError(f'{path} is not a transformers model directory (no config.json with a model_type).')
    loader = _HF_DIR_LOADERS.get(model_type)
    if loader is None:
        raise ValueError(f'{path} holds a {model_type!r} model and no loader is registered for it (registered: '
                         f'{registered_hf_model_types()}); call mllm_align.models.register_hf_dir_loader('
                         f'{model_type!r}, fn), or import the module of the base that registers it.')
    fn = _resolve_loader(loader)
    extra: dict[str, Any] = {}
    if check_remote_code_trusted(path, resolve_trust_remote_code(trust_remote_code)):
        params = inspect.signature(fn).parameters
        if 'trust_remote_code' not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise ValueError(f'{path} ships modelling code, but the loader registered for {model_type!r} '
                             f'({getattr(fn, "__qualname__", fn)}) takes no trust_remote_code: it cannot load such a '
                             'directory. Register a loader that does (register_hf_dir_loader(..., overwrite=True)).')
        extra['trust_remote_code'] = True
    return fn(path, template=template, dtype=dtype, device=device, **extra)


# ---------------------------------------------------------------------------------------------
# transformers LlavaForConditionalGeneration
# ---------------------------------------------------------------------------------------------
class HFLlavaModel(MultimodalModel):
    """A transformers ``LlavaForConditionalGeneration`` behind the ``MultimodalModel`` interface.

    ``language_model`` is the whole ``LlavaForConditionalGeneration`` (run on ``inputs_embeds`` it is its
    language model + ``lm_head``; ``logits_to_keep`` works); ``encode_images`` is HF's
    ``get_image_features`` (one ``[P, D]`` per image); ``prepare_inputs`` splices them into mllm_align
    prompt ids with :func:`~mllm_align.models.splice.splice_image_features`. Plug-ins re-attached from an
    export (:func:`attach_exported_plugins`) see every LLM pass through :meth:`run_llm`, so MIR of a
    MoCa export equals MIR of the trained model. All weights are frozen (scoring only).

    Args:
        hf_model: the loaded ``LlavaForConditionalGeneration``.
        tokenizer: its tokenizer.
        template: the mllm_align chat template the model was trained with.
        image_processor: its HF image processor (for :meth:`process_images`).
        max_new_tokens: generation length in ``predict``.
    """

    _reserved_names = MultimodalModel._reserved_names | {'hf_model', 'image_processor'}

    def __init__(self, hf_model: nn.Module, tokenizer: Any = None, template: str | None = None,
                 image_processor: Any = None, max_new_tokens: int = 64) -> None:
        super().__init__(tokenizer=tokenizer, template=template, max_new_tokens=max_new_tokens)
        self.hf_model = hf_model
        self.hf_model.requires_grad_(False)
        self.image_processor = image_processor
        self.supports_logits_to_keep = True
        self.register_frozen_keys_hook()

    # ------------------------------------------------------------------ interface
    @property
    def language_model(self) -> nn.Module:
        return self.hf_model

    @property
    def llm_config(self) -> Any:
        """The text model's config (``hidden_size``, ``num_hidden_layers``, …)."""
        return self.hf_model.config.get_text_config()

    def encode_images(self, pixel_values: torch.Tensor, **image_inputs: Any) -> list[torch.Tensor]:
        """``pixel_values [N, 3, H, W]`` → N tensors ``[P, D]`` (HF vision tower, feature layer and strategy,
        projector)."""
        dtype = next(self.hf_model.model.vision_tower.parameters()).dtype
        features = self.hf_model.get_image_features(pixel_values=pixel_values.to(dtype), **image_inputs)
        if isinstance(features, torch.Tensor):  # (N, P, D)
            return list(features.unbind(0))
        return [f.reshape(-1, f.shape[-1]) for f in features]

    def prepare_inputs(self, data: dict, padding_side: Literal['right', 'left'] = 'right') -> MultimodalInputs:
        """``input_ids [B, T]`` with placeholders, optional ``attention_mask``/``labels``, ``pixel_values
        [N, 3, H, W]`` → spliced inputs (``data`` is not modified)."""
        pixel_values = data.get('pixel_values')
        features = None if pixel_values is None else self.get_image_features(pixel_values)
        attention = data.get('attention_mask')
        if attention is None:
            attention = torch.ones_like(data['input_ids'], dtype=torch.bool)
        return splice_image_features(data['input_ids'], attention, self.input_embeddings, features,
                                     labels=data.get('labels'), pad_token_id=self.pad_token_id,
                                     padding_side=padding_side)

    def process_images(self, images: list[Any]) -> dict[str, Any]:
        """PIL images → ``{'pixel_values': [N, 3, H, W]}`` with the export's image processor."""
        if self.image_processor is None:
            raise ValueError('This HF Llava directory has no image processor (preprocessor_config.json); pass '
                             '`image_processor=` to HFLlavaModel.')
        return {'pixel_values': self.image_processor(images=images, return_tensors='pt')['pixel_values']}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, template: str | None = None,
                        dtype: torch.dtype | str | None = None, device: str | torch.device = 'cpu',
                        attach_plugins: bool = True) -> 'HFLlavaModel':
        """Load an HF Llava directory, its tokenizer and image processor, and the plug-ins it exported.

        The template is ``template`` if given, else the ``template`` recorded in the directory's
        :data:`EXPORT_INFO_NAME` (written by ``tools/convert_to_hf.py``). Plug-ins are re-attached
        (:func:`attach_exported_plugins`) unless ``attach_plugins`` is False.

        Raises:
            ValueError: not a Llava directory, or no template can be found.
        """
        from transformers import AutoTokenizer, LlavaForConditionalGeneration

        from .builders import load_image_processor

        path = Path(path)
        model_type = hf_dir_model_type(path)
        if model_type is None:
            raise ValueError(f'{path} is not a transformers model directory (no config.json).')
        if model_type != 'llava':
            raise ValueError(f'{path} holds a {model_type!r} model; expected an HF Llava export '
                             '(LlavaForConditionalGeneration, model_type "llava").')
        info = read_export_info(path) or {}
        if template is None:
            template = info.get('template') if isinstance(info.get('template'), str) else None
        if template is None:
            raise ValueError(f'No chat template for {path}: pass --template (e.g. vicuna_v1, plain); an export by '
                             f'tools/convert_to_hf.py records it in {EXPORT_INFO_NAME}.')
        kwargs = {} if dtype is None else dict(dtype=dtype)
        hf_model = LlavaForConditionalGeneration.from_pretrained(str(path), **kwargs, **hf_weights_kwargs(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        image_processor = load_image_processor(str(path)) if (path / 'preprocessor_config.json').is_file() else None
        model = cls(hf_model.eval(), tokenizer, template, image_processor).to(device)
        if attach_plugins:
            attach_exported_plugins(model, path, info)
            model.to(device)
        return model.eval()
