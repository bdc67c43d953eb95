"""The model interface every multimodal base implements, and the behaviour they share.

A *base* is one way of turning images and text into an LLM's input: LLaVA-style (vision tower →
projector → placeholders replaced by feature rows, :class:`~mllm_align.models.llava.LLaVAModel`),
Qwen2-VL (its own vision transformer, variable patch grids, M-RoPE positions), an exported HF Llava
directory (MIR scoring). Alignment plug-ins (:mod:`mllm_align.models.plugin`), metrics, hooks and
tools talk to this interface only.

What a base provides (subclasses implement the first group; the rest is here):

* ``language_model``: the HF causal LM (possibly peft-wrapped) that decoder-layer plug-ins hook.
* ``encode_images(pixel_values, **image_inputs) -> list[[P_i, D]]``: projected features, one tensor per
  image, in the LLM's embedding dtype; images may differ in size and token count.
* ``prepare_inputs(data, padding_side) -> MultimodalInputs``: input embeddings ``[B, L, D]``, labels,
  attention mask, position ids (opaque ``[..., B, L]``: ``[B, L]`` for 1-D RoPE, ``[3, B, L]`` for
  M-RoPE), ``image_mask [B, L]``, the spliced ids.
* ``llm_forward(inputs, **kwargs)``: one LLM pass (``.logits``, ``.hidden_states``); ``generate_ids``.
* Optional: ``process_images`` (the base's own processor), ``image_token_grids(image_inputs)`` (each image's
  token grid, for mask pooling), ``export_hf``.
* Here: :meth:`get_image_features` (encoder + plug-in transforms), :meth:`run_llm` (plug-ins notified
  before every pass), ``input_embeddings`` / ``output_head`` / ``decoder_layers``, tokenizer and chat
  template, the plug-in container, :meth:`compute_loss`, :meth:`predict`, the trainable-only
  :meth:`state_dict` with its missing-key check, and parameter-count logging.

Shape letters: B batch, T text length (with placeholders), L spliced length, N images, P_i tokens of
image i, D LLM hidden size, V vocabulary.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Literal, Mapping, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import nn

from ..constants import IGNORE_INDEX
from .builders import resolve_pad_token_id
from .plugin import AlignPlugin
from .splice import MultimodalInputs

Mode = Literal['loss', 'predict', 'tensor']

__all__ = ['MultimodalModel', 'VisionEncoder', 'AlignPlugin', 'MultimodalInputs', 'build_module',
           'apply_lora', 'lora_config', 'find_linear_names', 'find_decoder_layers', 'supervised_positions',
           'causal_lm_loss']


@runtime_checkable
class VisionEncoder(Protocol):
    """What a base needs from an image encoder (``VisionTower`` is one; any module with these works).

    ``hidden_size``: C, the feature width; ``num_prefix_tokens``: leading non-patch tokens the encoder
    emits (CLS, registers; 0 after dropping them); ``forward(pixel_values) -> [N, P, C]``;
    ``apply_lora(lora_cfg)``: wrap the encoder's own linear layers with LoRA in place.
    """

    hidden_size: int
    num_prefix_tokens: int

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def apply_lora(self, lora_cfg: Any) -> None: ...


def build_module(cfg: Any, **defaults: Any) -> Any:
    """Build ``cfg`` if it is an mmengine-style dict (``type`` a callable or registry name), else return it.

    ``defaults`` fill arguments the config does not set (e.g. the LLM's sizes for a plug-in).
    """
    if isinstance(cfg, Mapping) and 'type' in cfg:
        cfg = {**defaults, **cfg}
        obj_type = cfg.pop('type')
        if isinstance(obj_type, str):
            from mmengine.registry import MODELS
            return MODELS.build(dict(type=obj_type, **cfg))
        return obj_type(**cfg)
    return cfg


def find_linear_names(model: nn.Module, exclude: tuple[str, ...] = ('lm_head', 'output_layer')) -> list[str]:
    """Leaf names of every ``nn.Linear`` in ``model`` except the output head (LoRA's default targets)."""
    names = {name.split('.')[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    return sorted(n for n in names if n not in exclude)


def lora_config(lora_cfg: Any) -> Any:
    """A fresh peft ``LoraConfig`` from a config dict (``type`` ignored) or a copy of a ``LoraConfig``."""
    import copy

    from peft import LoraConfig

    if isinstance(lora_cfg, Mapping):
        lora_cfg = dict(lora_cfg)
        lora_cfg.pop('type', None)
        return LoraConfig(**lora_cfg)
    return copy.deepcopy(lora_cfg)


def apply_lora(model: nn.Module, lora_cfg: Any, config_key: str = 'llm_lora') -> nn.Module:
    """Wrap ``model`` with a peft LoRA adapter built from ``lora_cfg`` (a ``LoraConfig`` or its dict).

    Raises:
        ValueError: ``target_modules`` names a module the model does not have (``config_key`` names the
            config entry to fix).
    """
    from peft import get_peft_model

    lora_cfg = lora_config(lora_cfg)
    if lora_cfg.target_modules is None:
        lora_cfg.target_modules = find_linear_names(model)
    try:
        return get_peft_model(model, lora_cfg)
    except ValueError as exc:
        if 'not found in the base model' in str(exc) or 'Target modules' in str(exc):
            raise ValueError(f'{config_key}.target_modules = {sorted(lora_cfg.target_modules)} matches no module of '
                             f'{type(model).__name__}; its linear layers are {find_linear_names(model)}. '
                             f'Fix `{config_key}.target_modules` (or leave it None for every linear layer).') from exc
        raise


# Attribute paths, from a causal-LM (or its decoder), where HF decoder-only models keep their layers.
_LAYER_PATHS = ('model.layers', 'layers', 'model.language_model.layers', 'language_model.layers',
                'transformer.h', 'gpt_neox.layers', 'model.decoder.layers', 'transformer.blocks')


def _get_path(obj: Any, path: str) -> Any:
    for name in path.split('.'):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of an HF decoder-only LLM (LLaMA, Qwen2, Mistral, Phi-3, …), peft-wrapped or not.

    Looks through ``get_base_model()`` (peft), then ``get_decoder().layers``, then the usual
    attribute paths (``model.layers``, ``transformer.h``, ``gpt_neox.layers``, …).

    Raises:
        ValueError: no non-empty ``nn.ModuleList`` of layers was found.
    """
    base = model.get_base_model() if hasattr(model, 'get_base_model') else model
    decoder = base.get_decoder() if hasattr(base, 'get_decoder') else None
    for root, path in [(decoder, 'layers')] + [(base, p) for p in _LAYER_PATHS]:
        layers = _get_path(root, path) if root is not None else None
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise ValueError(f'Cannot find the decoder layers of {type(model).__name__}: looked for '
                     f'get_decoder().layers and {", ".join(_LAYER_PATHS)}.')


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[B, L] -> [P]``: sorted positions t whose next label ``labels[:, t + 1]`` is supervised in at least
    one sample (the rows of the logits a causal LM loss reads)."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy: position t predicts ``labels[t + 1]``; ``IGNORE_INDEX`` skipped.

    loss = 1/|S| Σ_{(b,t)∈S} −log softmax(logits[b, t])[labels[b, t+1]],  S = {(b, t): labels[b, t+1] ≠ ignore}.
    Only the rows in S are upcast to float32 (never a float32 copy of the whole ``[B, L, V]``).

    Args:
        logits: ``[B, L, V]``, or ``[B, P, V]`` at ``positions`` (HF ``logits_to_keep``).
        labels: ``[B, L]``.
        positions: ``[P]`` sequence positions of the logits' rows (e.g. :func:`supervised_positions`, or
            any sorted superset of them below L - 1); None: every position.
    """
    if positions is None:
        logits, targets = logits[:, :-1], labels[:, 1:]  # (B, L-1, V), (B, L-1)
    else:
        targets = labels[:, positions + 1]  # (B, P)
    supervised = targets != IGNORE_INDEX
    if not supervised.any():
        # No supervised token in the batch: a zero loss that still touches the graph.
        return logits.sum() * 0.0
    return F.cross_entropy(logits[supervised].float(), targets[supervised])


def _union_positions(first: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
    extra = [p for p in others if p is not first]
    if not extra:
        return first
    return torch.unique(torch.cat([first, *extra]))  # sorted


class MultimodalModel(BaseModel):
    """Shared behaviour of every multimodal base (module docstring for the interface).

    Subclasses build their parts in ``__init__``, then call :meth:`setup_plugins` (and, if they accept
    one, :meth:`load_pretrained`) last.

    Args:
        tokenizer: tokenizer or its config dict; needed for ``mode='predict'`` and chat hooks.
        template: chat template name (``mllm_align.data.templates``) used by ``predict`` and chat hooks.
        max_new_tokens: generation length in ``predict``.
        data_preprocessor: mmengine data preprocessor config (moves the batch to the device).
    """

    #: Components that are not plug-ins (a plug-in name must not collide with them).
    _reserved_names: frozenset[str] = frozenset({'llm', 'visual_encoder', 'projector', 'data_preprocessor',
                                                 'tokenizer', 'plugins'})

    def __init__(self, tokenizer: Any = None, template: str | None = None, max_new_tokens: int = 64,
                 data_preprocessor: Any = None, init_cfg: Any = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.tokenizer = build_module(tokenizer)
        self.template = template
        self.max_new_tokens = max_new_tokens
        self._plugin_names: list[str] = []
        self._main_inputs: MultimodalInputs | None = None
        #: Whether ``llm_forward`` accepts HF ``logits_to_keep`` (set by the subclass; tests may switch it off).
        self.supports_logits_to_keep = False

    # ------------------------------------------------------------------ interface (subclasses)
    @property
    def language_model(self) -> nn.Module:
        """The HF causal LM with its output head (peft-wrapped when LoRA is applied)."""
        raise NotImplementedError(f'{type(self).__name__} must define `language_model`.')

    def encode_images(self, pixel_values: torch.Tensor, **image_inputs: Any) -> list[torch.Tensor]:
        """Projected image features, one ``[P_i, D]`` tensor per image (before plug-in transforms)."""
        raise NotImplementedError(f'{type(self).__name__} must define `encode_images`.')

    def prepare_inputs(self, data: dict, padding_side: Literal['right', 'left'] = 'right') -> MultimodalInputs:
        """Splice the batch's image features into its text; ``data`` is not modified."""
        raise NotImplementedError(f'{type(self).__name__} must define `prepare_inputs`.')

    def llm_forward(self, inputs: MultimodalInputs, **kwargs: Any) -> Any:
        """One pass of :attr:`language_model` on spliced inputs (plug-ins already notified)."""
        return self.language_model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                   position_ids=inputs.position_ids, use_cache=False, **kwargs)

    def process_images(self, images: list[Any]) -> dict[str, Any]:
        """PIL images → the batch entries :meth:`encode_images` takes (``pixel_values`` and, for bases with
        variable patch grids, e.g. ``image_grid_thw``), with the base's own image processor."""
        raise NotImplementedError(f'{type(self).__name__} has no image processor: pass `image_processor=` to it.')

    def image_token_grids(self, image_inputs: Mapping[str, Any]) -> list[tuple[int, int]]:
        """Optional: each image's LLM-token grid ``(rows, columns)``, one per image of ``image_inputs`` (the
        entries :meth:`process_images` returns), such that image i's P_i = rows·columns feature rows are that grid
        in row-major order. What pools masks over image tokens (CoLVA's object features) needs; bases whose
        tokens are not one grid per image (several tiles, video frames) raise a ``ValueError`` saying so."""
        raise NotImplementedError(f'{type(self).__name__} does not report image token grids (image_token_grids).')

    def export_hf(self, out_dir: Any, **kwargs: Any) -> Any:
        """Write a transformers directory that ``from_pretrained`` loads with the same logits."""
        raise NotImplementedError(f'{type(self).__name__} cannot be exported to transformers.')

    def generate_ids(self, inputs: MultimodalInputs, data: dict, eos_token_id: Any,
                     max_new_tokens: int) -> torch.Tensor:
        """Greedy generation from left-padded spliced inputs: ``[B, new tokens]`` ids."""
        return self.language_model.generate(
            inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask.long(),
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos_token_id,
            pad_token_id=self.pad_token_id, temperature=None, top_p=None, top_k=None)

    # ------------------------------------------------------------------ LLM parts (derived)
    @property
    def llm_config(self) -> Any:
        """The language model's HF config (``hidden_size``, ``num_hidden_layers``, …)."""
        return self.language_model.config

    @property
    def input_embeddings(self) -> nn.Module:
        """The LLM's input embedding table (``[V, D]``)."""
        return self.language_model.get_input_embeddings()

    embed_tokens = input_embeddings

    @property
    def output_head(self) -> nn.Module:
        """The LLM's output projection to the vocabulary (``lm_head``)."""
        return self.language_model.get_output_embeddings()

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The LLM's decoder layers, in order (what MoCa hooks and MIR reads)."""
        return find_decoder_layers(self.language_model)

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.llm_config.hidden_size)

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding table (= the output vocabulary)."""
        return int(self.input_embeddings.weight.shape[0])

    @property
    def pad_token_id(self) -> int:
        return resolve_pad_token_id(self.llm_config, self.tokenizer)

    def init_weights(self) -> None:
        """No-op: weights come from pretrained directories (mmengine would re-initialise HF modules)."""

    # ------------------------------------------------------------------ plug-ins
    def setup_plugins(self, plugins: Mapping[str, Any] | None) -> None:
        """Build each plug-in config (``{name: dict(type=…)}``, in order) and attach it.

        Each plug-in becomes a child module under its name (``model.moca``; checkpoint keys ``moca.u``);
        an entry set to None (deleting an inherited plug-in) is skipped. Errors: :meth:`add_plugin`.
        """
        if plugins is None:
            return
        if not isinstance(plugins, Mapping):
            raise TypeError(f'model.plugins must be a dict {{name: dict(type=...)}}, got {type(plugins).__name__}.')
        for name, cfg in plugins.items():
            if cfg is None:
                continue  # deleting a plug-in from an inherited recipe: `model.plugins.moca = None`
            plugin_cls = cfg.get('type') if isinstance(cfg, Mapping) else type(cfg)
            if isinstance(plugin_cls, str):
                from mmengine.registry import MODELS
                plugin_cls = MODELS.get(plugin_cls)
            defaults = {}
            if isinstance(plugin_cls, type) and issubclass(plugin_cls, AlignPlugin) and isinstance(cfg, Mapping):
                defaults = plugin_cls.build_kwargs(self)
            self.add_plugin(name, build_module(cfg, **defaults))

    def add_plugin(self, name: str, plugin: AlignPlugin) -> None:
        """Append a built plug-in under ``name`` and ``attach`` it (also used to re-attach exported ones).

        Raises:
            TypeError: ``plugin`` does not implement :class:`AlignPlugin`.
            ValueError: the name collides with a model part, two plug-ins replace the LM loss, or the
                plug-in cannot attach to this base (its ``attach`` error, prefixed with the config key).
        """
        if not name.isidentifier() or name in self._reserved_names or name in self._plugin_names \
                or (hasattr(self, name) and name not in self._modules):
            raise ValueError(f'model.plugins.{name}: the name is taken by a model part or attribute '
                             '(or is not an identifier); choose another key.')
        if not isinstance(plugin, AlignPlugin):
            raise TypeError(f'model.plugins.{name} built a {type(plugin).__name__}, which does not implement '
                            'mllm_align.models.AlignPlugin (the plug-in protocol).')
        if plugin.replaces_lm_loss:
            other = [n for n, p in self.plugins.items() if p.replaces_lm_loss]
            if other:
                raise ValueError(f'model.plugins.{name} and model.plugins.{other[0]} both replace the LM loss; '
                                 'keep one of them.')
        self.add_module(name, plugin)
        self._plugin_names.append(name)
        try:
            plugin.attach(self)
        except (ValueError, TypeError) as exc:  # the base cannot host it: name the config key
            self._plugin_names.remove(name)
            del self._modules[name]
            raise type(exc)(f'model.plugins.{name}: {type(plugin).__name__} cannot attach to '
                            f'{type(self).__name__}: {exc}') from exc

    def remove_plugin(self, name: str) -> AlignPlugin:
        """Take plug-in ``name`` out of the model and return it (undoing its hooks, e.g. ``MoCa.detach``, is the
        caller's part). Benchmarks and ablations swap plug-ins on one built base this way."""
        if name not in self._plugin_names:
            raise KeyError(f'No plug-in {name!r}; the model has {self._plugin_names}.')
        self._plugin_names.remove(name)
        plugin = self._modules.pop(name)
        return plugin  # type: ignore[return-value]

    @property
    def plugins(self) -> 'OrderedDict[str, AlignPlugin]':
        """The plug-ins in the order they run (a read-only view)."""
        return OrderedDict((name, self._modules[name]) for name in self._plugin_names)

    def load_pretrained(self, pretrained_pth: str | None) -> None:
        """Load a checkpoint of this model (``iter_N.pth``, trainable-only) at build time, if given."""
        if pretrained_pth is not None:
            from ..checkpoint_io import load_trained_weights
            load_trained_weights(self, pretrained_pth)

    # ------------------------------------------------------------------ steps
    def get_image_features(self, pixel_values: torch.Tensor, **image_inputs: Any) -> list[torch.Tensor]:
        """Encoder → projector → plug-in transforms: one ``[P_i, D]`` tensor per image."""
        features = self.encode_images(pixel_values, **image_inputs)
        for plugin in self.plugins.values():
            features = plugin.transform_image_features(features, self)
        return features

    def notify_plugins(self, inputs: MultimodalInputs) -> None:
        """Tell every plug-in which inputs the next LLM pass runs on (``before_llm_pass``)."""
        for plugin in self.plugins.values():
            plugin.before_llm_pass(inputs)

    def run_llm(self, inputs: MultimodalInputs, **kwargs: Any) -> Any:
        """One LLM pass on spliced inputs; returns the HF output (``.logits [B, L, V]`` or ``[B, P, V]``).

        Every plug-in's ``before_llm_pass`` sees ``inputs`` first. An extra pass made while a loss is being
        computed (CAL's no-image pass) is followed by ``before_llm_pass(main inputs)``, so what plug-ins
        keep for activation-checkpointing recomputation matches the main pass again.
        """
        self.notify_plugins(inputs)
        try:
            return self.llm_forward(inputs, **kwargs)
        finally:
            main = self._main_inputs
            if main is not None and main is not inputs:
                self.notify_plugins(main)

    # ------------------------------------------------------------------ mmengine contract
    def forward(self, data: dict, data_samples: Any = None, mode: Mode = 'tensor') -> Any:
        if mode == 'loss':
            return self.compute_loss(data)
        if mode == 'predict':
            return self.predict(data)
        if mode == 'tensor':
            return self.run_llm(self.prepare_inputs(data)).logits
        raise ValueError(f"Unknown mode {mode!r}: {type(self).__name__}.forward accepts 'loss', 'predict' or "
                         "'tensor'.")

    def compute_loss(self, data: dict) -> dict[str, torch.Tensor]:
        """``{'loss_lm': next-token CE over supervised tokens}`` (or the replacing plug-in's), plus every
        plug-in's terms.

        The LLM computes logits only at the positions some loss reads (HF ``logits_to_keep``): the
        positions that predict a supervised label, united with each plug-in's
        :meth:`~AlignPlugin.logits_positions` (None from any of them: every position). In pre-training
        that skips lm_head and the ``[B, L, V]`` logits over the image and prompt tokens.
        """
        inputs = self.prepare_inputs(data)
        if inputs.labels is None:
            raise ValueError("mode='loss' needs `labels` in the batch.")
        plugins = list(self.plugins.values())
        positions: torch.Tensor | None = None
        if self.supports_logits_to_keep:
            lm_positions = supervised_positions(inputs.labels)  # (P,)
            wanted = [p.logits_positions(inputs, lm_positions) for p in plugins]
            if all(w is not None for w in wanted):
                positions = _union_positions(lm_positions, wanted)
        keep = {} if positions is None else {'logits_to_keep': positions}
        self._main_inputs = inputs
        try:
            logits = self.run_llm(inputs, **keep).logits  # (B, P, V) or (B, L, V)
            replacing = [p for p in plugins if p.replaces_lm_loss]
            losses: dict[str, torch.Tensor] = {}
            if not replacing:
                losses['loss_lm'] = causal_lm_loss(logits, inputs.labels, positions)
            for plugin in plugins:
                losses.update(plugin.loss(self, inputs, logits, positions))
        finally:
            self._main_inputs = None
        if 'loss_lm' not in losses:
            raise RuntimeError(f'{type(replacing[0]).__name__} replaces the LM loss but returned no `loss_lm`.')
        return losses

    def stop_token_ids(self) -> list[int]:
        """Ids that end a reply: the chat template's stop tokens (+ EOS), else the LLM's ``generation_config`` EOS.

        Raises:
            ValueError: the model has no tokenizer.
        """
        if self.tokenizer is None:
            raise ValueError(f'Generation needs a tokenizer: pass `tokenizer=` to {type(self).__name__}.')
        if self.template is not None:
            from ..data.templates import get_template
            return get_template(self.template).stop_token_ids(self.tokenizer)
        eos = self.language_model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]

    @torch.no_grad()
    def greedy_ids(self, data: dict, max_new_tokens: int | None = None) -> torch.Tensor:
        """Greedy new-token ids ``[B, new tokens]`` for prompts that end with an open assistant turn, stopping at
        :meth:`stop_token_ids`; the prefill is announced to the plug-ins (1-token decode steps carry no image)."""
        inputs = self.prepare_inputs(data, padding_side='left')
        self.notify_plugins(inputs)
        return self.generate_ids(inputs, data, self.stop_token_ids(), max_new_tokens or self.max_new_tokens)

    @torch.no_grad()
    def predict(self, data: dict) -> list[dict[str, Any]]:
        """Greedy generation for prompts that end with an open assistant turn.

        Returns one ``{'prediction': text, 'token_ids': list[int]}`` per sample.
        """
        if self.tokenizer is None:
            raise ValueError(f"mode='predict' needs a tokenizer: pass `tokenizer=` to {type(self).__name__}.")
        out = self.greedy_ids(data)
        results = []
        for ids in out.tolist():
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            results.append({'prediction': text, 'token_ids': ids})
        return results

    def resize_token_embeddings(self, new_num_tokens: int, **kwargs: Any) -> None:
        """Resize the LLM's input/output embeddings after tokens were added to the tokenizer, and the
        vocabulary-sized plug-in heads with them. Call before the optimizer is built; ``kwargs`` go to HF
        ``resize_token_embeddings`` (e.g. ``pad_to_multiple_of``)."""
        self.language_model.resize_token_embeddings(new_num_tokens, **kwargs)
        for plugin in self.plugins.values():
            plugin.resize_vocab(self.vocab_size)

    # ------------------------------------------------------------------ checkpoints
    def trainable_names(self) -> set[str]:
        """Names of parameters this run trains (what ``state_dict`` saves)."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args: Any, **kwargs: Any) -> 'OrderedDict[str, torch.Tensor]':
        """Only the trained parameters (the frozen base is rebuilt from the config)."""
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get('prefix', args[1] if len(args) > 1 else '')
        keep = {prefix + n for n in self.trainable_names()}
        return OrderedDict((k, v) for k, v in full.items() if k in keep)

    def register_frozen_keys_hook(self) -> None:
        """Loading a trainable-only checkpoint must not report frozen keys as missing (a missing *trained*
        key still is). Subclasses call it once in ``__init__``."""
        self.register_load_state_dict_post_hook(MultimodalModel._ignore_frozen_missing_keys)

    @staticmethod
    def _ignore_frozen_missing_keys(module: 'MultimodalModel', incompatible_keys: Any) -> None:
        trainable = module.trainable_names()
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if k in trainable]

    def log_parameter_counts(self) -> None:
        """Log trainable / frozen parameter counts per component (a wrong freeze shows at once)."""
        rows = []
        for name, child in self.named_children():
            if name == 'data_preprocessor':
                continue
            n_train = sum(p.numel() for p in child.parameters() if p.requires_grad)
            n_all = sum(p.numel() for p in child.parameters())
            rows.append(f'{name}: trainable {n_train:,} / frozen {n_all - n_train:,}')
        print_log('Parameters — ' + '; '.join(rows), logger='current')


def accepts_logits_to_keep(llm: nn.Module) -> bool:
    """Whether an HF causal LM's ``forward`` takes ``logits_to_keep`` (looking through peft)."""
    base_llm = llm.get_base_model() if hasattr(llm, 'get_base_model') else llm
    return 'logits_to_keep' in inspect.signature(type(base_llm).forward).parameters
