"""MIR hidden-state extraction (mllm_align/models/hidden_states.py) and the probe it reads
(mllm_align/data/mir_probe.py), on the tiny offline LLaMA/Vicuna + CLIP models."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from mllm_align.constants import IMAGE_TOKEN_INDEX
from mllm_align.data.mir_probe import build_mir_probe, default_text_folder, seeded_order
from mllm_align.metrics.mir import compute_mir
from mllm_align.models import LLaVAModel, VisionTower, load_image_processor, load_llm, load_tokenizer
from mllm_align.models.hf_llava import HFLlavaModel
from mllm_align.models.hidden_states import compute_model_mir, iter_modality_hidden_states, parse_layers

TEXTS = ['The ferry left late because of fog over the harbour.',
         'Council members argued about the library budget for hours.',
         'Bread needs flour, water, salt, yeast and patience.',
         'Volunteers counted trout in the river pools all weekend.',
         'The chess club won the regional final again this year.',
         'A new timetable adds trains between the two cities.']


def _model(assets, llm='llama', template='plain'):
    torch.manual_seed(0)  # the projector is randomly initialised
    return LLaVAModel(llm=dict(type=load_llm, path=str(assets.llm(llm))),
                      visual_encoder=dict(type=VisionTower, path=str(assets.vision('clip'))),
                      tokenizer=dict(type=load_tokenizer, path=str(assets.llm(llm))), template=template).eval()


@pytest.fixture(scope='module')
def probe_dirs(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp('mir_probe')
    images = root / 'images'
    images.mkdir()
    for src in sorted((tiny_assets.image_folder / 'images').glob('train_*.png'))[:6]:
        shutil.copy(src, images / src.name)
    texts = root / 'texts'
    texts.mkdir()
    for i, text in enumerate(TEXTS):
        (texts / f'{i:02d}.txt').write_text(text + '\n')
    (texts / 'README.md').write_text('ignored: not a .txt/.story file')
    return root


@pytest.fixture(scope='module')
def llama(tiny_assets):
    return _model(tiny_assets)


@pytest.fixture(scope='module')
def processor(tiny_assets):
    return load_image_processor(str(tiny_assets.vision('clip')))


def _probe(probe_dirs, processor, **kwargs):
    kwargs.setdefault('eval_num', 4)
    return build_mir_probe(probe_dirs / 'images', probe_dirs / 'texts', image_processor=processor, **kwargs)


def _reference_states(model, probe, index):
    """Hidden states of one pair from a hand-built forward pass: embeddings, image rows, embeddings."""
    enc = probe.encode(index, model.tokenizer, model.template)
    ids = enc.input_ids
    p = ids.index(IMAGE_TOKEN_INDEX)
    emb = model.llm.get_input_embeddings()
    with torch.no_grad():
        feats = model.get_image_features(enc.pixel_values)[0]  # (P, D)
        seq = torch.cat([emb(torch.tensor(ids[:p])), feats, emb(torch.tensor(ids[p + 1:]))])  # (L, D)
        hidden = model.llm(inputs_embeds=seq[None], output_hidden_states=True).hidden_states
    return enc, p, feats.shape[0], [h[0] for h in hidden]


@pytest.mark.parametrize('text_tokens', ['after_image', 'all', 'text'])
def test_rows_equal_hand_indexed_forward(llama, probe_dirs, processor, text_tokens):
    probe = _probe(probe_dirs, processor)
    got = list(iter_modality_hidden_states(llama, probe, 'all', text_tokens=text_tokens))
    assert len(got) == len(probe)
    for i, (vision, text) in enumerate(got):
        enc, p, P, hidden = _reference_states(llama, probe, i)
        assert len(vision) == len(text) == 2  # layers 1..K, K = 2; the embedding output is skipped
        mask = torch.tensor(enc.text_mask)
        assert not mask[:p + 1].any() and mask.sum() == enc.num_text_tokens  # BOS / image are not text
        for j, k in enumerate([1, 2]):
            h = hidden[k]
            if text_tokens == 'after_image':
                expected_text = h[p + P:]
            elif text_tokens == 'all':
                expected_text = torch.cat([h[:p], h[p + P:]])
            else:
                expected_text = h[p + P:][mask[p + 1:]]
            torch.testing.assert_close(vision[j], h[p:p + P], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(text[j], expected_text, rtol=1e-5, atol=1e-5)
        # plain template: {bos}<image>{text}{eos}: after_image = the text + EOS, text = the text only
        expected_rows = {'after_image': enc.num_text_tokens + 1, 'all': enc.num_text_tokens + 2,
                         'text': enc.num_text_tokens}[text_tokens]
        assert text[0].shape[0] == expected_rows


def test_last_layer_is_after_final_norm(llama, probe_dirs, processor):
    probe = _probe(probe_dirs, processor, eval_num=1)
    captured = {}
    hook = llama.llm.model.layers[-1].register_forward_hook(
        lambda mod, args, out: captured.__setitem__('h', out[0] if isinstance(out, tuple) else out))
    try:
        (vision, _), = iter_modality_hidden_states(llama, probe, [2])
    finally:
        hook.remove()
    P = vision[0].shape[0]
    enc = probe.encode(0, llama.tokenizer, llama.template)
    p = enc.input_ids.index(IMAGE_TOKEN_INDEX)
    normed = llama.llm.model.norm(captured['h'])[0, p:p + P]
    torch.testing.assert_close(vision[0], normed, rtol=1e-5, atol=1e-5)


def test_layer_selection(llama, probe_dirs, processor):
    probe = _probe(probe_dirs, processor, eval_num=2)
    all_layers = list(iter_modality_hidden_states(llama, probe))
    second = list(iter_modality_hidden_states(llama, probe, '2'))
    with_embed = list(iter_modality_hidden_states(llama, probe, [0, 2]))
    for (va, ta), (vb, tb), (vc, tc) in zip(all_layers, second, with_embed):
        assert len(vb) == 1 and len(vc) == 2
        torch.testing.assert_close(vb[0], va[1])
        torch.testing.assert_close(tc[1], ta[1])
    assert parse_layers('all', 32) == list(range(1, 33))
    assert parse_layers('1-3,7, 5', 32) == [1, 2, 3, 5, 7]
    assert parse_layers([3, 1, 3], 4) == [1, 3]
    with pytest.raises(ValueError, match=r'\[5\] out of range; the LLM has 2 decoder layers'):
        list(iter_modality_hidden_states(llama, probe, '5'))
    with pytest.raises(ValueError, match='cannot parse'):
        parse_layers('1-x', 4)


def test_streaming_mir_equals_batch_mir_on_concatenated_states(llama, probe_dirs, processor):
    probe = _probe(probe_dirs, processor, eval_num=6)
    streamed = compute_model_mir(llama, probe)
    rows = list(iter_modality_hidden_states(llama, probe))
    vision = [torch.cat([v[j] for v, _ in rows]) for j in range(2)]
    text = [torch.cat([t[j] for _, t in rows]) for j in range(2)]
    batch = compute_mir(vision, text)
    assert streamed.num_vision_rows == batch.num_vision_rows and streamed.num_text_rows == batch.num_text_rows
    assert streamed.mir == pytest.approx(batch.mir, rel=1e-6)
    assert abs(streamed.mir - batch.mir) <= streamed.mir_bound + 1e-9
    # batching the forward passes (right padding) changes nothing beyond rounding
    assert compute_model_mir(llama, probe, batch_size=4).mir == pytest.approx(batch.mir, rel=1e-5)


def test_model_mode_and_grad_mode_restored(llama, probe_dirs, processor):
    probe = _probe(probe_dirs, processor, eval_num=2)
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    llama.train()
    try:
        it = iter_modality_hidden_states(llama, probe)
        next(it)
        assert torch.is_grad_enabled()  # no_grad is scoped to the forward pass, not leaked to the caller
        assert not llama.training
        it.close()
        assert llama.training
        compute_model_mir(llama, probe)
        assert llama.training
    finally:
        llama.eval()
    assert all(torch.equal(before[k], v) for k, v in llama.state_dict().items())


def test_pairing_is_deterministic_and_seeded(probe_dirs, processor):
    a = _probe(probe_dirs, processor, eval_num=5)
    b = _probe(probe_dirs, processor, eval_num=5)
    assert a.pairs == b.pairs and a.fingerprint() == b.fingerprint()
    other = _probe(probe_dirs, processor, eval_num=5, seed=1)
    assert [p.text_id for p in other.pairs] != [p.text_id for p in a.pairs]
    plain = _probe(probe_dirs, processor, eval_num=5, seed=None)
    assert [p.image_id for p in plain.pairs] == sorted(p.name for p in (probe_dirs / 'images').iterdir())[:5]
    assert [p.text_id for p in plain.pairs] == [f'{i:02d}.txt' for i in range(5)]
    assert all(p.text_id.endswith('.txt') for p in a.pairs)  # README.md ignored
    # the seeded order of an id does not depend on which other ids exist
    ids = ['a', 'b', 'c', 'd']
    order = [ids[i] for i in seeded_order(ids, 0)]
    more = ids + ['e']
    assert [more[i] for i in seeded_order(more, 0) if more[i] != 'e'] == order


def test_llava_json_images_jsonl_texts_and_truncation(tiny_assets, probe_dirs, processor, llama, tmp_path):
    jsonl = tmp_path / 'texts.jsonl'
    jsonl.write_text('\n'.join(json.dumps({'text': t}) for t in TEXTS) + '\n\n')
    probe = build_mir_probe(tiny_assets.pretrain_json, jsonl, image_folder=tiny_assets.image_folder, eval_num=3,
                            image_processor=processor, text_max_tokens=5)
    assert len(probe) == 3 and all(p.image_path.is_file() for p in probe.pairs)
    assert all(p.text_id.startswith('texts.jsonl:') for p in probe.pairs)
    enc = probe.encode(0, llama.tokenizer, llama.template)
    assert enc.truncated and enc.num_text_tokens == 5 and sum(enc.text_mask) == 5
    (_, text), = list(iter_modality_hidden_states(llama, build_mir_probe(
        tiny_assets.pretrain_json, jsonl, image_folder=tiny_assets.image_folder, eval_num=1,
        image_processor=processor, text_max_tokens=5), text_tokens='text'))
    assert text[0].shape[0] == 5


def test_story_files_and_default_texts(probe_dirs, processor, tmp_path):
    (tmp_path / 'a.story').write_text('The story itself.\n\n@highlight\n\nA highlight that is dropped.\n')
    probe = build_mir_probe(probe_dirs / 'images', tmp_path, eval_num=1, image_processor=processor)
    assert probe.pairs[0].text == 'The story itself.'
    default = build_mir_probe(probe_dirs / 'images', None, eval_num=2, image_processor=processor)
    assert default.sources['texts'] == str(default_text_folder())
    assert len(list(default_text_folder().glob('*.txt'))) >= 30


def test_user_placement_vicuna_and_plain_refusal(tiny_assets, probe_dirs, processor, llama):
    vicuna = _model(tiny_assets, 'vicuna', 'vicuna_v1')
    user = _probe(probe_dirs, processor, eval_num=2, placement='user')
    reply = _probe(probe_dirs, processor, eval_num=2)
    ids_user = user.encode(0, vicuna.tokenizer, vicuna.template).input_ids
    ids_reply = reply.encode(0, vicuna.tokenizer, vicuna.template).input_ids
    assert vicuna.tokenizer.decode(ids_user[ids_user.index(IMAGE_TOKEN_INDEX) + 1:]).rstrip().endswith('ASSISTANT:')
    assert vicuna.tokenizer.decode(ids_reply[ids_reply.index(IMAGE_TOKEN_INDEX) + 1:]).endswith('</s>')
    assert compute_model_mir(vicuna, user).num_text_rows[0] > 0
    with pytest.raises(ValueError, match="text_tokens='text' needs"):
        list(iter_modality_hidden_states(vicuna, user, text_tokens='text'))
    with pytest.raises(ValueError, match="placement='user' with template 'plain'"):
        list(iter_modality_hidden_states(llama, user))


def test_bad_probe_inputs(probe_dirs, processor, tmp_path, caplog):
    images = tmp_path / 'images'
    shutil.copytree(probe_dirs / 'images', images)
    (images / 'notes.txt').write_text('not an image')
    with pytest.raises(ValueError, match=r"notes\.txt.*cannot be used.*--skip-bad-images"):
        build_mir_probe(images, probe_dirs / 'texts', eval_num=7, image_processor=processor)
    probe = build_mir_probe(images, probe_dirs / 'texts', eval_num=7, image_processor=processor, skip_bad_images=True)
    assert [s[0] for s in probe.skipped_images] == ['notes.txt']
    assert len(probe) == 6 and probe.requested == 7  # 6 images available: warned, all used

    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='is empty'):
        build_mir_probe(tmp_path / 'empty', probe_dirs / 'texts', image_processor=processor)
    with pytest.raises(ValueError, match=r'has no \.txt/\.story files'):
        build_mir_probe(probe_dirs / 'images', tmp_path / 'empty', image_processor=processor)
    texts = tmp_path / 'texts'
    texts.mkdir()
    (texts / 'blank.txt').write_text('  \n')
    with pytest.raises(ValueError, match=r'blank\.txt is empty'):
        build_mir_probe(probe_dirs / 'images', texts, eval_num=1, image_processor=processor)
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(json.dumps({'text': 'fine'}) + '\n' + json.dumps({'txt': 'no text key'}) + '\n')
    with pytest.raises(ValueError, match=r'bad\.jsonl:2: expected an object with a string "text"'):
        build_mir_probe(probe_dirs / 'images', bad, eval_num=2, image_processor=processor, seed=None)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        build_mir_probe(tmp_path / 'missing', probe_dirs / 'texts', image_processor=processor)
    with pytest.raises(ValueError, match='eval_num must be a positive integer'):
        build_mir_probe(probe_dirs / 'images', probe_dirs / 'texts', eval_num=0)
    with caplog.at_level(logging.WARNING):
        few = build_mir_probe(probe_dirs / 'images', probe_dirs / 'texts', eval_num=50, image_processor=processor)
    assert len(few) == 6


def test_hf_llava_export_gives_the_same_rows(llama, probe_dirs, processor, tmp_path):
    from mllm_align.models.export import export_llava_to_hf
    out = export_llava_to_hf(llama, tmp_path / 'hf', image_processor=processor)
    hf = HFLlavaModel.from_pretrained(out, template='plain')
    probe = _probe(probe_dirs, processor, eval_num=2)
    for (va, ta), (vb, tb) in zip(iter_modality_hidden_states(llama, probe), iter_modality_hidden_states(hf, probe)):
        for x, y in zip(va + ta, vb + tb):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    # the export records the template it was trained with; without it, the template must be given
    assert HFLlavaModel.from_pretrained(out).template == 'plain'
    info_file = out / 'mllm_align_export.json'
    info_file.write_text(json.dumps({**json.loads(info_file.read_text()), 'template': None}))
    with pytest.raises(ValueError, match='pass --template'):
        HFLlavaModel.from_pretrained(out)


def test_hf_llava_export_reattaches_moca(tiny_assets, probe_dirs, processor, tmp_path):
    """A MoCa-trained model: MIR rows of its HF export equal the LLaVAModel's (MoCa re-attached)."""
    from mllm_align.align import MoCa
    from mllm_align.align.moca import MOCA_WEIGHTS_NAME
    from mllm_align.models.export import export_llava_to_hf
    torch.manual_seed(0)
    model = LLaVAModel(llm=dict(type=load_llm, path=str(tiny_assets.llm('llama'))),
                       visual_encoder=dict(type=VisionTower, path=str(tiny_assets.vision('clip'))),
                       tokenizer=dict(type=load_tokenizer, path=str(tiny_assets.llm('llama'))),
                       template='plain', plugins=dict(moca=dict(type=MoCa))).eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # a trained-looking calibration
        model.moca.u.add_(torch.randn(model.moca.u.shape, generator=gen) * 0.3)
        model.moca.v.add_(torch.randn(model.moca.v.shape, generator=gen) * 0.3)
    out = export_llava_to_hf(model, tmp_path / 'hf', image_processor=processor)
    probe = _probe(probe_dirs, processor, eval_num=2)
    hf = HFLlavaModel.from_pretrained(out, template='plain')
    assert list(hf.plugins) == ['moca']  # re-attached through the plug-in protocol
    rows = list(iter_modality_hidden_states(model, probe))
    for (va, ta), (vb, tb) in zip(rows, iter_modality_hidden_states(hf, probe)):
        for x, y in zip(va + ta, vb + tb):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    # a recorded plug-in whose files are gone is an error, not a silently uncalibrated model
    (out / MOCA_WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="plug-in 'moca' .* files \\['moca.safetensors'\\] are missing"):
        HFLlavaModel.from_pretrained(out, template='plain')
    # control: the same export without MoCa recorded gives different vision rows
    info_file = out / 'mllm_align_export.json'
    info = json.loads(info_file.read_text())
    info['plugins'] = []
    info_file.write_text(json.dumps(info))
    plain = HFLlavaModel.from_pretrained(out, template='plain')
    assert not plain.plugins
    (va, _), (vb, _) = rows[0], next(iter(iter_modality_hidden_states(plain, probe)))
    assert max((x - y).abs().max().item() for x, y in zip(va, vb)) > 1e-2
