"""MoCa: modality calibration of vision tokens inside a decoder-only LLM.

Huang et al., "Deciphering Cross-Modal Alignment in Large Vision-Language Models with Modality
Integration Rate", arXiv:2410.07167 (https://arxiv.org/abs/2410.07167), section "MoCa". Reference
code: https://github.com/shikiw/Modality-Integration-Rate at c5187b2749cdbccc47cf205a9b9d06d93408f264
(``--use_moca True --moca_std 0.`` in ``scripts/v1_5/pre_sft_moca.sh``), which forks transformers'
LLaMA file; here the same map attaches to any HF decoder-only LLM without copying a modelling file.

At the end of every decoder layer k (on the residual stream after the MLP add, i.e. the layer's
output) and at vision-token positions only::

    h_k ← u_k ⊙ h_k + v_k          u_k, v_k ∈ R^D, one pair per layer

    embeddings ─► layer 0 ─► MoCa_0 ─► layer 1 ─► MoCa_1 ─► … ─► layer K-1 ─► MoCa_K-1 ─► norm
                  (only rows where image_mask is True change; text rows pass through bit-exact)

* **Init.** u = 1, v = 0: the model is exactly unchanged at initialisation (``init_std=0``, the
  default and the paper's setting). ``init_std > 0`` adds N(0, init_std²) noise to both (the seed's
  ``moca_std``).
* **Dtype.** u, v are created in fp32 whatever the LLM's dtype; the map is computed in fp32
  (``v + h.float() * u``) and cast back to the hidden dtype; gradients of u, v are fp32 sums. (A
  DeepSpeed bf16 engine casts every parameter to bf16, these too; the compute stays fp32 and the
  optimiser keeps fp32 masters.)
* **Cost.** Only the vision rows are gathered, computed and written back, in place in the layer's
  fresh output tensor, by one small autograd function that saves just those rows (N × D per layer,
  in the hidden dtype); the vision-row indices are computed once per ``set_image_mask`` (one
  device sync per pass). See ``benchmarks/bench_moca_overhead.py``.
* **Where the mask comes from.** ``set_image_mask(image_mask [B, L])`` before every LLM pass (the
  plug-in hook ``before_llm_pass``, which every base calls in ``run_llm`` and ``predict``). The mask
  stays set until the next call, so gradient checkpointing can recompute layers during backward;
  use ``with moca.use_image_mask(mask):`` for an extra pass in between (it restores the previous
  mask), e.g. CAL's no-image pass.
* **Skip rules**, per layer call with hidden states ``[B, L, D]``:

  - L == 1: a KV-cache decode step (the mask describes the prefill): skipped, output unchanged;
  - no mask set (``None``): skipped, the LLM behaves as without MoCa;
  - mask of another shape than ``[B, L]``: ``ValueError`` naming both shapes (a stale mask from
    another pass would calibrate the wrong positions);
  - under ``torch.no_grad()`` with no vision token in the batch: skipped (the result is the same).
    With gradients on, the map always runs, so u, v are in the graph (zero gradient) and DDP
    without ``find_unused_parameters`` is happy on text-only batches.

* **How it attaches.** Each decoder layer (``model.model.layers`` for LLaMA, Qwen2, Mistral,
  Phi-3, …, found through a peft wrapper too) gets an instance-level ``forward`` that calls the
  original and calibrates its output (a tensor, or the first element of a tuple). A wrapper, not an
  ``nn.Module`` forward hook, because transformers records ``output_hidden_states`` by wrapping
  ``forward``: this way the hidden states it reports are the calibrated ones the next layer sees.
  Gradient checkpointing recomputes through it. Parameter names of the LLM do not change.
  :meth:`MoCa.detach` restores the layers.
* **DeepSpeed ZeRO-3.** u, v belong to ``model.moca``, whose own forward never runs; they are read
  inside the decoder layers' (wrapped) forward. ZeRO-3 gathers a module's own parameters (not its
  children's) before its forward and backward, so when the parameters are partitioned (they carry
  ``ds_id``) :meth:`MoCa.set_image_mask` registers u, v as external parameters of every wrapped
  layer (``deepspeed.zero.register_external_parameter``; :meth:`MoCa.detach` unregisters them):
  each layer gathers them for its forward and backward. Without DeepSpeed nothing is imported or
  registered. Checked on CPU with DeepSpeed's CPU accelerator against the same model without
  DeepSpeed (losses, gradients of u, v and of the LLM, updated weights over two SGD steps; 1 and 2
  processes): ``tools/check_zero3.py``, ``tests/align/test_zero3.py``.
* **Weight decay.** Exclude u, v with ``paramwise_cfg=dict(custom_keys={'moca': dict(decay_mult=0.0)})``
  in ``optim_wrapper`` (:data:`NO_DECAY_PARAMWISE_CFG`); :meth:`MoCa.no_decay_names` lists them.
* **Checkpoints.** u, v are trainable parameters of the child ``model.moca``: ``moca.u`` and
  ``moca.v`` (``[K, D]`` each) in ``iter_N.pth``.

HF export: ``tools/convert_to_hf.py`` writes :data:`MOCA_WEIGHTS_NAME` (u, v in fp32) and
:data:`MOCA_CONFIG_NAME` beside the ``LlavaForConditionalGeneration`` weights. A transformers user
loads the export with two lines::

    model = LlavaForConditionalGeneration.from_pretrained(export_dir)
    attach_moca_to_hf(model, export_dir)   # from mllm_align.align.moca import attach_moca_to_hf

There the image mask is ``input_ids == config.image_token_id`` (or, for ``inputs_embeds``, the rows
equal to that token's embedding, as HF Llava itself finds them), computed at every forward of the
``LlavaModel``; generation's 1-token decode steps are skipped as above. Without the second line
the model runs uncalibrated (different logits).

Shape letters: B batch, L sequence length, D hidden size, K decoder layers.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..models.base import MultimodalModel, find_decoder_layers
from ..models.plugin import AlignPlugin
from ..models.splice import MultimodalInputs
from ._zero3 import zero3_gather_in, zero3_release_from

__all__ = ['MoCa', 'attach_moca_to_hf', 'find_decoder_layers', 'load_moca', 'save_moca_for_hf',
           'MOCA_CONFIG_NAME', 'MOCA_WEIGHTS_NAME', 'NO_DECAY_PARAMWISE_CFG']

MOCA_WEIGHTS_NAME = 'moca.safetensors'
MOCA_CONFIG_NAME = 'moca_config.json'
MOCA_FORMAT = 'mllm_align.moca/1'
# mmengine ``optim_wrapper.paramwise_cfg`` that keeps MoCa out of weight decay (matches ``moca.u``/``moca.v``).
NO_DECAY_PARAMWISE_CFG = dict(custom_keys={'moca': dict(decay_mult=0.0)})

class _VisionAffine(torch.autograd.Function):
    """``h[rows] ← (v + h[rows] · u)`` in fp32, cast back; the other rows untouched.

    ``hidden [B, L, D]`` is viewed as ``[B·L, D]`` rows; ``rows [N]`` are the vision rows. Only
    those rows are read, computed and written (the whole tensor is copied only when ``inplace`` is
    False), and the saved state is the N original rows, not the full hidden state. Backward:
    ``∂h = g`` off the vision rows and ``g · u`` on them, ``∂u = Σ_rows g · h``, ``∂v = Σ_rows g``
    (fp32 sums). In place, the layer output is overwritten; autograd's version counter would
    report an error at backward if another op had saved that tensor.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, u: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                inplace: bool) -> torch.Tensor:
        D = hidden.shape[-1]
        out = hidden if inplace else hidden.clone(memory_format=torch.contiguous_format)
        flat = out.view(-1, D)  # (B·L, D)
        h_rows = flat.index_select(0, rows)  # (N, D)
        f32 = torch.promote_types(out.dtype, torch.float32)  # fp32 (fp64 stays fp64)
        flat.index_copy_(0, rows, torch.addcmul(v.to(f32), h_rows.to(f32), u.to(f32)).to(out.dtype))
        if inplace:
            ctx.mark_dirty(hidden)
        ctx.save_for_backward(h_rows, u, rows)
        ctx.v_dtype = v.dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h_rows, u, rows = ctx.saved_tensors
        D = grad.shape[-1]
        g_flat = grad.reshape(-1, D)  # (B·L, D)
        f32 = torch.promote_types(grad.dtype, torch.float32)
        g_rows = g_flat.index_select(0, rows).to(f32)  # (N, D)
        grad_h = grad_u = grad_v = None
        if ctx.needs_input_grad[0]:
            grad_h = g_flat.clone(memory_format=torch.contiguous_format)
            grad_h.index_copy_(0, rows, (g_rows * u.to(f32)).to(grad.dtype))
            grad_h = grad_h.view(grad.shape)
        if ctx.needs_input_grad[1]:
            grad_u = (g_rows * h_rows.to(f32)).sum(0).to(u.dtype)  # (D,)
        if ctx.needs_input_grad[2]:
            grad_v = g_rows.sum(0).to(ctx.v_dtype)  # (D,)
        return grad_h, grad_u, grad_v, None, None


class _CalibratedForward:
    """A decoder layer's original ``forward`` followed by MoCa on its output.

    Installed as the layer's instance attribute ``forward``; a plain object (not a closure) so that
    ``copy.deepcopy`` of the LLM rebinds ``inner`` to the copied layer.
    """

    def __init__(self, moca: 'MoCa', layer_idx: int, inner: Any) -> None:
        self.moca = moca
        self.layer_idx = layer_idx
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.moca.calibrate_output(self.inner(*args, **kwargs), self.layer_idx)


class MoCa(AlignPlugin):
    """Per-layer, per-channel affine calibration of vision tokens: Eq. h ← u ⊙ h + v (MIR paper, MoCa).

    See the module docstring for where it sits, the skip rules, export and loading, and how u, v are
    gathered under DeepSpeed ZeRO-3 (registered with each wrapped layer; checked by ``tools/check_zero3.py``).

    Args:
        num_layers: K, the LLM's decoder layers (the base fills it from its LLM).
        hidden_size: D, the LLM's hidden size (the base fills it from its LLM).
        init_std: std of Gaussian noise added to the identity init (u = 1, v = 0); the seed's
            ``moca_std``. Default 0: exact identity, the model's outputs are unchanged at init.

    Attributes:
        u: ``[K, D]`` fp32 scale, init 1.
        v: ``[K, D]`` fp32 shift, init 0.

    Raises:
        ValueError: non-positive sizes or a negative ``init_std``.
    """

    def __init__(self, num_layers: int, hidden_size: int, init_std: float = 0.0) -> None:
        super().__init__()
        if num_layers <= 0 or hidden_size <= 0:
            raise ValueError(f'MoCa needs positive sizes, got num_layers={num_layers}, hidden_size={hidden_size}.')
        if init_std < 0:
            raise ValueError(f'MoCa init_std must be >= 0, got {init_std}.')
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.init_std = float(init_std)
        self.u = nn.Parameter(torch.ones(num_layers, hidden_size, dtype=torch.float32))  # (K, D)
        self.v = nn.Parameter(torch.zeros(num_layers, hidden_size, dtype=torch.float32))  # (K, D)
        self.reset_parameters()
        self._image_mask: torch.Tensor | None = None  # (B, L) bool
        self._rows: torch.Tensor | None = None  # (N,) flat indices of its True entries
        self._attached: list[tuple[nn.Module, Any]] = []  # (layer, its previous instance forward or None)
        self._extra_handles: list[Any] = []  # e.g. the HF Llava mask pre-hook

    def reset_parameters(self) -> None:
        """u = 1, v = 0, plus N(0, init_std²) noise when ``init_std > 0``."""
        with torch.no_grad():
            self.u.fill_(1.0)
            self.v.zero_()
            if self.init_std > 0:
                self.u.add_(torch.randn_like(self.u) * self.init_std)
                self.v.add_(torch.randn_like(self.v) * self.init_std)

    def extra_repr(self) -> str:
        return (f'num_layers={self.num_layers}, hidden_size={self.hidden_size}, init_std={self.init_std}, '
                f'attached={self.attached}')

    # ------------------------------------------------------------------ attaching
    @property
    def attached(self) -> bool:
        return bool(self._attached)

    @classmethod
    def build_kwargs(cls, model: MultimodalModel) -> dict[str, Any]:
        """K and D from the base's LLM (``num_layers``, ``hidden_size``)."""
        return dict(num_layers=model.num_layers, hidden_size=model.hidden_size)

    def attach(self, llm: nn.Module, layers: nn.ModuleList | None = None) -> 'MoCa':
        """Wrap the ``forward`` of each decoder layer (once); returns self.

        Args:
            llm: a multimodal base (:class:`~mllm_align.models.base.MultimodalModel`: its
                ``decoder_layers``), or an HF decoder-only LLM (``LlamaForCausalLM``, …, its base model,
                or a peft wrapper).
            layers: the decoder layers, when :func:`find_decoder_layers` cannot find them.

        Raises:
            RuntimeError: already attached.
            ValueError: the LLM has another number of layers or another hidden size than this MoCa.
        """
        if isinstance(llm, MultimodalModel):
            layers = llm.decoder_layers if layers is None else layers
            llm = llm.language_model
        if self.attached:
            raise RuntimeError('MoCa is already attached; call detach() first.')
        layers = find_decoder_layers(llm) if layers is None else layers
        if len(layers) != self.num_layers:
            raise ValueError(f'MoCa has num_layers={self.num_layers} but {type(llm).__name__} has {len(layers)} '
                             'decoder layers: build it with the LLM\'s config.num_hidden_layers.')
        config = getattr(llm, 'config', None)
        hidden = getattr(config, 'hidden_size', None)
        if hidden is not None and hidden != self.hidden_size:
            raise ValueError(f'MoCa has hidden_size={self.hidden_size} but {type(llm).__name__} has hidden size '
                             f'{hidden}: build it with the LLM\'s config.hidden_size.')
        for k, layer in enumerate(layers):
            previous = layer.__dict__.get('forward')  # an instance-level forward someone set, or None
            layer.forward = _CalibratedForward(self, k, layer.forward)
            self._attached.append((layer, previous))
        return self

    def detach(self) -> None:
        """Restore every wrapped layer's ``forward`` and drop extra hooks (idempotent).

        Raises:
            RuntimeError: a layer's ``forward`` was replaced again after :meth:`attach` (by
                something that did not restore it); that layer is left as it is.
        """
        for handle in self._extra_handles:
            handle.remove()
        self._extra_handles.clear()
        stuck = []
        for layer, previous in self._attached:
            zero3_release_from(layer, self.parameters(recurse=False))
            current = layer.__dict__.get('forward')
            if not (isinstance(current, _CalibratedForward) and current.moca is self):
                stuck.append(type(layer).__name__)
                continue
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous
        self._attached.clear()
        if stuck:
            raise RuntimeError(f'MoCa could not unwrap {len(stuck)} decoder layer(s) ({stuck[0]}, …): their forward '
                               'was replaced after MoCa attached. Remove that wrapper first.')

    remove = detach

    # ------------------------------------------------------------------ the mask
    def set_image_mask(self, image_mask: torch.Tensor | None) -> None:
        """Set the vision-token mask ``[B, L]`` (True at vision positions) for the next passes, or None.

        Kept until the next call: layers recomputed during backward (gradient checkpointing) see it.
        The flat indices of the vision rows are computed here, once per pass (one device sync).
        Under DeepSpeed ZeRO-3 it also registers u, v with every wrapped layer (module docstring).
        """
        rows = None
        if image_mask is not None:
            for layer, _ in self._attached:  # ZeRO-3: each layer gathers u, v for its forward/backward
                zero3_gather_in(layer, self.parameters(recurse=False))
            if image_mask.dim() != 2:
                raise ValueError(f'image_mask must be [B, L], got shape {tuple(image_mask.shape)}.')
            image_mask = image_mask.bool()
            rows = image_mask.reshape(-1).nonzero().squeeze(1)  # (N,) indices into the [B·L] rows
        self._image_mask, self._rows = image_mask, rows

    def before_llm_pass(self, inputs: MultimodalInputs) -> None:
        """Plug-in protocol: calibrate the vision positions of this pass (``inputs.image_mask``)."""
        self.set_image_mask(inputs.image_mask)

    @property
    def image_mask(self) -> torch.Tensor | None:
        return self._image_mask

    @contextlib.contextmanager
    def use_image_mask(self, image_mask: torch.Tensor | None) -> Iterator['MoCa']:
        """Use ``image_mask`` inside the block, then restore the previous one (for an extra LLM pass)."""
        saved = self._image_mask, self._rows
        self.set_image_mask(image_mask)
        try:
            yield self
        finally:
            self._image_mask, self._rows = saved

    def _rows_for(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Flat vision-row indices ``[N]`` for ``hidden [B, L, D]``, or None to skip (rules in the module doc)."""
        B, L = hidden.shape[0], hidden.shape[1]
        mask, rows = self._image_mask, self._rows
        if L == 1 or mask is None:
            return None
        if tuple(mask.shape) != (B, L):
            raise ValueError(f'MoCa image_mask has shape {tuple(mask.shape)} but the decoder layer output is '
                             f'[B, L] = {(B, L)}: the mask must come from this pass. Call '
                             'moca.set_image_mask(mask) before the LLM (or use `with moca.use_image_mask(...)`, '
                             'None for a pass without vision tokens).')
        if rows.numel() == 0 and not torch.is_grad_enabled():
            return None  # nothing to calibrate; with gradients on, u and v must still join the graph (DDP)
        if rows.device != hidden.device:
            rows = self._rows = rows.to(hidden.device)
        return rows

    # ------------------------------------------------------------------ the map
    def calibrate(self, hidden: torch.Tensor, layer_idx: int, image_mask: torch.Tensor) -> torch.Tensor:
        """``u_k ⊙ h + v_k`` at vision positions, in fp32, cast back; other positions are returned as they are.

        Out of place (``hidden`` is not modified).

        Args:
            hidden: ``[B, L, D]`` output of decoder layer ``layer_idx``.
            layer_idx: k in ``[0, K)``.
            image_mask: ``[B, L]`` (or ``[B, L, 1]``) bool, True at vision positions.

        Returns:
            ``[B, L, D]`` in ``hidden``'s dtype.
        """
        rows = image_mask.reshape(-1).bool().nonzero().squeeze(1).to(hidden.device)  # (N,)
        return _VisionAffine.apply(hidden, self.u[layer_idx], self.v[layer_idx], rows, False)

    def calibrate_output(self, output: Any, layer_idx: int) -> Any:
        """Calibrate a decoder layer's output: a ``[B, L, D]`` tensor or a tuple whose first item is one.

        Works in place on the layer's fresh output tensor when autograd allows it (contiguous, not a
        view, not a leaf that requires grad), else on a copy.
        """
        hidden = output[0] if isinstance(output, tuple) else output
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            shape = f' of shape {tuple(hidden.shape)}' if isinstance(hidden, torch.Tensor) else ''
            raise TypeError(f'MoCa expected decoder layer {layer_idx} to return a [B, L, D] tensor (or a tuple '
                            f'starting with one), got {type(hidden).__name__}{shape}.')
        rows = self._rows_for(hidden)
        if rows is None:
            return output
        inplace = hidden.is_contiguous() and hidden._base is None and not (hidden.is_leaf and hidden.requires_grad)
        calibrated = _VisionAffine.apply(hidden, self.u[layer_idx], self.v[layer_idx], rows, inplace)
        return (calibrated,) + tuple(output[1:]) if isinstance(output, tuple) else calibrated

    def forward(self, hidden: torch.Tensor, layer_idx: int, image_mask: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`calibrate` (MoCa normally runs through the attached layers)."""
        return self.calibrate(hidden, layer_idx, image_mask)

    # ------------------------------------------------------------------ optimiser
    @staticmethod
    def no_decay_names(prefix: str = 'moca') -> list[str]:
        """Parameter names to keep out of weight decay (as named in the model: ``moca.u``, ``moca.v``).

        In a config: ``optim_wrapper=dict(..., paramwise_cfg=dict(custom_keys={'moca': dict(decay_mult=0.0)}))``.
        """
        return [f'{prefix}.u', f'{prefix}.v'] if prefix else ['u', 'v']


    # ------------------------------------------------------------------ export (plug-in protocol)
    def export_files(self, model: MultimodalModel, out_dir: str | os.PathLike) -> list[str]:
        """u, v beside an HF export (:func:`save_moca_for_hf`); the image token id is read from the
        export's ``config.json`` when it is already written."""
        config_file = Path(out_dir) / 'config.json'
        image_token_id = None
        if config_file.is_file():
            hf_config = json.loads(config_file.read_text())
            image_token_id = hf_config.get('image_token_index', hf_config.get('image_token_id'))
        return save_moca_for_hf(self, out_dir, image_token_id=image_token_id)

    @classmethod
    def from_export(cls, model: MultimodalModel, directory: str | os.PathLike) -> "MoCa | None":
        """The MoCa saved in an HF export directory (None if it holds none), on ``model``'s device."""
        if not (Path(directory) / MOCA_WEIGHTS_NAME).is_file():
            return None
        moca = load_moca(directory)
        return moca.to(next(model.parameters()).device)


# ---------------------------------------------------------------------------------------- HF export
def save_moca_for_hf(moca: MoCa, out_dir: str | os.PathLike, image_token_id: int | None = None) -> list[str]:
    """Write u, v (fp32 safetensors) and a small JSON beside an exported ``LlavaForConditionalGeneration``.

    Returns:
        The file names written: ``[MOCA_WEIGHTS_NAME, MOCA_CONFIG_NAME]``.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tensors = {'u': moca.u.detach().float().cpu().contiguous(), 'v': moca.v.detach().float().cpu().contiguous()}
    save_file(tensors, str(out_dir / MOCA_WEIGHTS_NAME), metadata={'format': MOCA_FORMAT})
    config = dict(
        format=MOCA_FORMAT,
        num_layers=moca.num_layers,
        hidden_size=moca.hidden_size,
        image_token_id=image_token_id,
        equation='h <- u * h + v at vision-token positions, at the output of every decoder layer k (u[k], v[k])',
        dtype='parameters fp32; computed in fp32 and cast back to the hidden dtype',
        skip='1-token decode steps',
        load=('from mllm_align.align.moca import attach_moca_to_hf; '
              'attach_moca_to_hf(LlavaForConditionalGeneration.from_pretrained(d), d)'))
    (out_dir / MOCA_CONFIG_NAME).write_text(json.dumps(config, indent=2) + '\n')
    return [MOCA_WEIGHTS_NAME, MOCA_CONFIG_NAME]


def _moca_files(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    weights = path / MOCA_WEIGHTS_NAME if path.is_dir() else path
    config = weights.parent / MOCA_CONFIG_NAME
    missing = [str(p) for p in (weights, config) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f'No MoCa export at {str(path)!r}: missing {", ".join(missing)}. Export with '
                                'tools/convert_to_hf.py from a config that sets model.moca.')
    return weights, config


def load_moca(path: str | os.PathLike) -> MoCa:
    """A :class:`MoCa` with the u, v saved by :func:`save_moca_for_hf` (``path``: the export dir or the file)."""
    from safetensors.torch import load_file

    weights, config_file = _moca_files(path)
    config = json.loads(config_file.read_text())
    if config.get('format') != MOCA_FORMAT:
        raise ValueError(f'{config_file}: format {config.get("format")!r}, expected {MOCA_FORMAT!r}.')
    moca = MoCa(config['num_layers'], config['hidden_size'])
    state = load_file(str(weights))
    moca.load_state_dict({'u': state['u'].float(), 'v': state['v'].float()}, strict=True)
    return moca


def attach_moca_to_hf(hf_model: nn.Module, path: str | os.PathLike) -> MoCa:
    """Re-attach an exported MoCa to a ``LlavaForConditionalGeneration`` (or ``LlavaModel``).

    The decoder layers of its language model are wrapped as in training, and a forward pre-hook on
    the ``LlavaModel`` sets the image mask at every call: ``input_ids == config.image_token_id``, or,
    when only ``inputs_embeds`` are given, the rows equal to that token's embedding (as HF Llava
    finds image positions). MoCa follows the model's device at each call and stays in fp32.

    Args:
        hf_model: the model loaded with ``from_pretrained`` from an export directory.
        path: the export directory (or its :data:`MOCA_WEIGHTS_NAME`).

    Returns:
        The attached MoCa; ``moca.detach()`` undoes it.

    Raises:
        TypeError: ``hf_model`` is not an HF Llava model.
        FileNotFoundError: ``path`` holds no MoCa export.
    """
    llava = getattr(hf_model, 'model', None) if not hasattr(hf_model, 'language_model') else hf_model
    if llava is None or not hasattr(llava, 'language_model'):
        raise TypeError(f'attach_moca_to_hf expects a transformers LlavaForConditionalGeneration or LlavaModel, '
                        f'got {type(hf_model).__name__}.')
    image_token_id = int(hf_model.config.image_token_id)
    moca = load_moca(path)
    saved_id = json.loads(_moca_files(path)[1].read_text()).get('image_token_id')
    if saved_id is not None and int(saved_id) != image_token_id:
        raise ValueError(f'The MoCa export was written for image_token_id={saved_id} but the model has '
                         f'{image_token_id}: load the model from the same export directory.')
    moca.to(next(hf_model.parameters()).device)
    moca.attach(llava.language_model)

    def set_mask(module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get('input_ids', args[0] if args else None)
        if input_ids is not None:
            mask = input_ids == image_token_id  # (B, L)
        else:
            embeds = kwargs.get('inputs_embeds')  # (B, L, D)
            if embeds is None:
                moca.set_image_mask(None)
                return
            token = torch.tensor(image_token_id, device=embeds.device)
            mask = (embeds == module.get_input_embeddings()(token).to(embeds.dtype)).all(-1)  # (B, L)
        if moca.u.device != mask.device:
            moca.to(mask.device)
        moca.set_image_mask(mask)

    moca._extra_handles.append(llava.register_forward_pre_hook(set_mask, with_kwargs=True))
    return moca
