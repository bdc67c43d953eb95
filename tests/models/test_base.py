"""The model interface (models/base.py) and the plug-in protocol (models/plugin.py), on LLaVAModel.

Plug-ins here are small recording ones, so what the base does at each step (order, positions, extra
passes, build-time checks) is checked without any method's maths.
"""
import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from mllm_align.constants import IGNORE_INDEX as IGN
from mllm_align.constants import IMAGE_TOKEN_INDEX as IMG
from mllm_align.models import AlignPlugin, LLaVAModel, MultimodalModel, VisionTower, load_llm
from mllm_align.models.base import causal_lm_loss, supervised_positions


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp('base_models')
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 pad_token_id=0, bos_token_id=1, eos_token_id=2)).save_pretrained(root / 'llama')
    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=16, patch_size=8)).save_pretrained(root / 'clip')
    return root


class PatchEncoder(nn.Module):
    """A vision encoder of any image size: non-overlapping 4-px patches, a linear map (P = HW / 16)."""

    hidden_size = 8
    num_prefix_tokens = 0

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, self.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        N, C, H, W = pixel_values.shape
        patches = pixel_values.unfold(2, 4, 4).unfold(3, 4, 4)  # (N, C, H/4, W/4, 4, 4)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(N, (H // 4) * (W // 4), C * 16)
        return self.proj(patches)  # (N, P, C')

    def apply_lora(self, lora_cfg) -> None:
        from mllm_align.models.base import apply_lora
        self.proj = apply_lora(nn.Sequential(self.proj), lora_cfg, 'visual_encoder_lora')


class Recorder(AlignPlugin):
    """Records every hook call into a shared log; optional positions, loss and feature transform."""

    def __init__(self, log: list, tag: str, positions=..., loss_value: float | None = None,
                 scale: float | None = None, replaces: bool = False) -> None:
        super().__init__()
        self.log, self.tag, self.positions, self.loss_value, self.scale = log, tag, positions, loss_value, scale
        self.replaces_lm_loss = replaces
        self.weight = nn.Parameter(torch.ones(()))

    def attach(self, model):
        assert isinstance(model, MultimodalModel)
        self.log.append((self.tag, 'attach'))

    def transform_image_features(self, features, model):
        self.log.append((self.tag, 'transform', [tuple(f.shape) for f in features]))
        return features if self.scale is None else [f * self.scale for f in features]

    def before_llm_pass(self, inputs):
        self.log.append((self.tag, 'pass', int(inputs.image_mask.sum())))

    def logits_positions(self, inputs, lm_positions):
        self.log.append((self.tag, 'positions'))
        return lm_positions if self.positions is ... else self.positions

    def loss(self, model, inputs, logits, positions):
        self.log.append((self.tag, 'loss', tuple(logits.shape), None if positions is None else positions.tolist()))
        if self.loss_value is None:
            return {}
        key = 'loss_lm' if self.replaces_lm_loss else f'loss_{self.tag}'
        return {key: logits.float().mean() * 0 + self.loss_value * self.weight}


def _llava(dirs, plugins=None, encoder=None, **kwargs):
    torch.manual_seed(0)
    enc = encoder if encoder is not None else dict(type=VisionTower, path=str(dirs / 'clip'))
    return LLaVAModel(llm=dict(type=load_llm, path=str(dirs / 'llama'), attn_implementation='eager'),
                      visual_encoder=enc, plugins=plugins, **kwargs)


def _batch():
    torch.manual_seed(1)
    return dict(input_ids=torch.tensor([[1, IMG, 5, 6, 7], [1, 8, 9, 0, 0]]),
                attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool(),
                labels=torch.tensor([[IGN, IGN, IGN, 6, 7], [IGN, IGN, 9, IGN, IGN]]),
                pixel_values=torch.randn(1, 3, 16, 16))


def test_hooks_run_in_plugin_order_at_each_step(dirs):
    log = []
    model = _llava(dirs, plugins=dict(a=dict(type=Recorder, log=log, tag='a', loss_value=1.0),
                                      b=dict(type=Recorder, log=log, tag='b', loss_value=2.0)))
    assert list(model.plugins) == ['a', 'b'] and model.a is model.plugins['a']
    assert log == [('a', 'attach'), ('b', 'attach')]
    log.clear()
    losses = model(_batch(), mode='loss')
    assert [entry[:2] for entry in log] == [('a', 'transform'), ('b', 'transform'), ('a', 'positions'),
                                            ('b', 'positions'), ('a', 'pass'), ('b', 'pass'), ('a', 'loss'),
                                            ('b', 'loss')]
    assert log[0][2] == [(4, 32)] and log[4][2] == 4  # one 16-px image = 4 CLIP patches, 4 image slots
    assert set(losses) == {'loss_lm', 'loss_a', 'loss_b'}
    assert losses['loss_a'].item() == 1.0 and losses['loss_b'].item() == 2.0


def test_logits_positions_are_the_union_or_everything(dirs):
    data = _batch()
    lm = supervised_positions(_llava(dirs).prepare_inputs(data).labels)
    log = []
    model = _llava(dirs, plugins=dict(a=dict(type=Recorder, log=log, tag='a', positions=torch.tensor([0]))))
    model(data, mode='loss')
    (_, _, shape, positions), = [e for e in log if e[1] == 'loss']
    assert positions == sorted({0, *lm.tolist()}) and shape[1] == len(positions)
    log.clear()
    model = _llava(dirs, plugins=dict(a=dict(type=Recorder, log=log, tag='a'),
                                      b=dict(type=Recorder, log=log, tag='b', positions=None)))
    model(data, mode='loss')
    L = model.prepare_inputs(data).labels.shape[1]
    assert [e[2:] for e in log if e[1] == 'loss'] == [((2, L, 64), None)] * 2


def test_lm_loss_with_plugins_that_add_nothing_equals_the_plain_loss(dirs):
    data = _batch()
    plain = _llava(dirs)(data, mode='loss')['loss_lm']
    model = _llava(dirs, plugins=dict(a=dict(type=Recorder, log=[], tag='a', positions=None)))
    inputs = model.prepare_inputs(data)
    reference = causal_lm_loss(model.llm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                         position_ids=inputs.position_ids).logits, inputs.labels)
    torch.testing.assert_close(model(data, mode='loss')['loss_lm'], plain)
    torch.testing.assert_close(plain, reference)


def test_a_replacing_plugin_owns_loss_lm_and_only_one_may(dirs):
    model = _llava(dirs, plugins=dict(r=dict(type=Recorder, log=[], tag='r', loss_value=3.0, replaces=True)))
    assert model(_batch(), mode='loss')['loss_lm'].item() == 3.0
    with pytest.raises(ValueError, match='model.plugins.s and model.plugins.r both replace the LM loss'):
        _llava(dirs, plugins=dict(r=dict(type=Recorder, log=[], tag='r', replaces=True),
                                  s=dict(type=Recorder, log=[], tag='s', replaces=True)))


def test_image_feature_transforms_apply_in_order(dirs):
    data = _batch()
    base = _llava(dirs)
    model = _llava(dirs, plugins=dict(a=dict(type=Recorder, log=[], tag='a', scale=2.0),
                                      b=dict(type=Recorder, log=[], tag='b', scale=3.0)))
    torch.testing.assert_close(model.get_image_features(data['pixel_values'])[0],
                               base.get_image_features(data['pixel_values'])[0] * 6.0)


def test_extra_pass_is_followed_by_the_main_pass_again(dirs):
    log = []

    class ExtraPass(Recorder):
        def loss(self, model, inputs, logits, positions):
            compact = type(inputs)(inputs.inputs_embeds[:, :2], inputs.attention_mask[:, :2],
                                   inputs.position_ids[:, :2], torch.zeros_like(inputs.image_mask[:, :2]))
            model.run_llm(compact)
            return {}

    model = _llava(dirs, plugins=dict(x=dict(type=ExtraPass, log=log, tag='x'),
                                      m=dict(type=Recorder, log=log, tag='m')))
    model(_batch(), mode='loss')
    assert [e[2] for e in log if e[0] == 'm' and e[1] == 'pass'] == [4, 0, 4]
    log.clear()
    model.run_llm(model.prepare_inputs(_batch()))  # outside a loss: no re-notification
    assert [e[2] for e in log if e[0] == 'm' and e[1] == 'pass'] == [4]


def test_plugin_build_errors_name_the_key(dirs):
    with pytest.raises(TypeError, match='model.plugins.x built a Linear, which does not implement'):
        _llava(dirs, plugins=dict(x=dict(type=nn.Linear, in_features=1, out_features=1)))
    with pytest.raises(ValueError, match='model.plugins.llm: the name is taken'):
        _llava(dirs, plugins=dict(llm=dict(type=Recorder, log=[], tag='llm')))
    model = _llava(dirs, plugins=dict(a=None))  # an inherited plug-in deleted with None
    assert list(model.plugins) == []


def test_plugin_parameters_are_saved_under_their_name(dirs):
    model = _llava(dirs, plugins=dict(a=dict(type=Recorder, log=[], tag='a')))
    keys = set(model.state_dict())
    assert 'a.weight' in keys and all(k.startswith(('projector.', 'a.')) for k in keys)


def test_projector_keys_it_does_not_take_are_an_error(dirs):
    with pytest.raises(ValueError, match='model.projector.hidden_size: the projector builder takes only `type`'):
        _llava(dirs, projector=dict(type='mlp2x_gelu', hidden_size=64))


def test_lora_targets_that_match_nothing_name_the_key(dirs):
    with pytest.raises(ValueError, match=r'model.llm_lora.target_modules = \[\'q_projection\'\] matches no module'):
        _llava(dirs, llm_lora=dict(r=4, lora_alpha=8, target_modules=['q_projection']))


def test_visual_encoder_must_follow_the_protocol(dirs):
    with pytest.raises(TypeError, match='model.visual_encoder must build a vision encoder'):
        _llava(dirs, encoder=nn.Linear(2, 2))


def test_images_of_different_sizes_and_token_counts_in_one_batch(dirs):
    """A size-agnostic encoder: a 8x8 image gives 4 tokens, a 12x8 one 6; each spliced where its <image> is."""
    model = _llava(dirs, encoder=PatchEncoder())
    torch.manual_seed(3)
    small, wide = torch.randn(3, 8, 8), torch.randn(3, 12, 8)
    data = dict(input_ids=torch.tensor([[1, IMG, 5, 6], [1, 7, IMG, 8]]),
                attention_mask=torch.ones(2, 4, dtype=torch.bool),
                labels=torch.tensor([[IGN, IGN, 5, 6], [IGN, IGN, IGN, 8]]), pixel_values=[small, wide])
    inputs = model.prepare_inputs(data)
    assert inputs.image_mask.sum(1).tolist() == [4, 6]
    # Independent: each image encoded alone and spliced by hand.
    emb = model.llm.get_input_embeddings()
    f_small = model.projector(model.visual_encoder(small[None]))[0]
    f_wide = model.projector(model.visual_encoder(wide[None]))[0]
    row0 = torch.cat([emb(torch.tensor([1])), f_small, emb(torch.tensor([5, 6]))])  # length 7
    row1 = torch.cat([emb(torch.tensor([1, 7])), f_wide, emb(torch.tensor([8]))])  # length 9
    torch.testing.assert_close(inputs.inputs_embeds[0, :7], row0)
    torch.testing.assert_close(inputs.inputs_embeds[1], row1)
    assert inputs.attention_mask.sum(1).tolist() == [7, 9]
    losses = model(data, mode='loss')
    losses['loss_lm'].backward()
    assert torch.isfinite(losses['loss_lm']) and model.projector[0].weight.grad.abs().sum() > 0


def test_encoder_lora_goes_through_the_protocol(dirs):
    model = _llava(dirs, encoder=PatchEncoder(), visual_encoder_lora=dict(r=2, lora_alpha=4, target_modules=['0']))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any('visual_encoder' in n and 'lora_' in n for n in trainable)


def test_a_plugin_the_base_cannot_host_names_the_key(dirs):
    from mllm_align.align import MoCa
    with pytest.raises(ValueError, match=r"model.plugins.moca: MoCa cannot attach to LLaVAModel: MoCa has "
                                         r"num_layers=3 but LlamaForCausalLM has 2 decoder layers"):
        _llava(dirs, plugins=dict(moca=dict(type=MoCa, num_layers=3)))
