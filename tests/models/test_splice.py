"""Image-token splicing against a hand-worked example."""
import pytest
import torch
from torch import nn

from mllm_align.constants import IGNORE_INDEX as IGN
from mllm_align.constants import IMAGE_TOKEN_INDEX as IMG
from mllm_align.models.splice import splice_image_features


class _IdEmbed(nn.Module):
    """Embeds id i as the 1-D vector [i] so spliced rows can be read back as ids."""

    def forward(self, ids):
        return ids.float()[..., None]


def test_hand_worked_two_samples_right_padding():
    # Sample 0: [5, IMG, 7, 8] with labels only on 7, 8. Sample 1: text only [9, 10] + 2 pads.
    input_ids = torch.tensor([[5, IMG, 7, 8], [9, 10, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = torch.tensor([[IGN, IGN, 7, 8], [IGN, 10, IGN, IGN]])
    feats = torch.tensor([[[100.], [101.], [102.]]])  # one image, P = 3
    out = splice_image_features(input_ids, attention, _IdEmbed(), feats, labels=labels, pad_token_id=-1)
    # Sample 0 becomes 5, f0, f1, f2, 7, 8 (length 6); sample 1 is 9, 10 then 4 pads.
    assert out.inputs_embeds[..., 0].tolist() == [[5, 100, 101, 102, 7, 8], [9, 10, 0, 0, 0, 0]]
    assert out.labels.tolist() == [[IGN, IGN, IGN, IGN, 7, 8], [IGN, 10, IGN, IGN, IGN, IGN]]
    assert out.attention_mask.tolist() == [[True] * 6, [True, True] + [False] * 4]
    assert out.image_mask.tolist() == [[False, True, True, True, False, False], [False] * 6]
    assert out.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert out.position_ids[1, :2].tolist() == [0, 1]
    assert out.input_ids.tolist() == [[5, IMG, IMG, IMG, 7, 8], [9, 10, -1, -1, -1, -1]]


def test_left_padding_and_several_images_per_sample():
    # Sample 0 has two images, sample 1 one image; input has left padding on sample 1.
    input_ids = torch.tensor([[IMG, 1, IMG, 2], [0, 0, IMG, 3]])
    attention = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    feats = torch.tensor([[[10.], [11.]], [[20.], [21.]], [[30.], [31.]]])  # N = 3 images, P = 2
    out = splice_image_features(input_ids, attention, _IdEmbed(), feats, padding_side='left')
    # Sample 0: 10 11 1 20 21 2 (6); sample 1: 30 31 3 (3) left-padded to 6.
    assert out.inputs_embeds[..., 0].tolist() == [[10, 11, 1, 20, 21, 2], [0, 0, 0, 30, 31, 3]]
    assert out.attention_mask[1].tolist() == [False, False, False, True, True, True]
    assert out.position_ids[1, 3:].tolist() == [0, 1, 2]
    assert out.image_mask.tolist() == [[True, True, False, True, True, False],
                                       [False, False, False, True, True, False]]
    assert out.labels is None


def test_text_only_batch_without_features():
    ids = torch.tensor([[3, 4, 5]])
    out = splice_image_features(ids, torch.ones_like(ids), _IdEmbed(), None)
    assert out.inputs_embeds[..., 0].tolist() == [[3, 4, 5]]
    assert not out.image_mask.any()


def test_placeholder_and_feature_count_mismatch_names_both_counts():
    ids = torch.tensor([[IMG, 1, IMG]])
    with pytest.raises(ValueError, match='2 image placeholders but 1 image'):
        splice_image_features(ids, torch.ones_like(ids), _IdEmbed(), torch.zeros(1, 4, 1))


def test_gradient_flows_into_image_features():
    ids = torch.tensor([[1, IMG, 2]])
    feats = torch.randn(1, 2, 1, requires_grad=True)
    out = splice_image_features(ids, torch.ones_like(ids), _IdEmbed(), feats)
    out.inputs_embeds.sum().backward()
    assert torch.equal(feats.grad, torch.ones_like(feats))


def test_images_with_different_token_counts_splice_in_order():
    # Sample 0: text, image A (3 rows), text; sample 1: image B (1 row), text, image C (2 rows).
    ids = torch.tensor([[5, IMG, 6, 0], [IMG, 7, IMG, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    feats = [torch.full((3, 1), 100.), torch.full((1, 1), 200.), torch.tensor([[301.], [302.]])]
    out = splice_image_features(ids, mask, _IdEmbed(), feats, labels=ids.clone())
    # Hand-worked: row 0 = 5, A, A, A, 6 (its pad dropped); row 1 = B, 7, C1, C2, 8. Both length 5.
    expected0 = [5., 100., 100., 100., 6.]
    expected1 = [200., 7., 301., 302., 8.]
    assert out.inputs_embeds[..., 0].tolist() == [expected0, expected1]
    assert out.image_mask.tolist() == [[False, True, True, True, False],
                                       [True, False, True, True, False]]
    assert out.attention_mask.sum(1).tolist() == [5, 5]
    assert out.labels[0].tolist()[:5] == [5, IGN, IGN, IGN, 6]


def test_list_of_equal_images_matches_the_stacked_tensor():
    ids = torch.tensor([[1, IMG, 2, IMG]])
    stacked = torch.randn(2, 3, 4)
    embed = torch.nn.Embedding(10, 4)
    a = splice_image_features(ids, torch.ones_like(ids), embed, stacked)
    b = splice_image_features(ids, torch.ones_like(ids), embed, list(stacked.unbind(0)))
    assert torch.equal(a.inputs_embeds, b.inputs_embeds) and torch.equal(a.image_mask, b.image_mask)


def test_count_mismatch_names_the_sample():
    ids = torch.tensor([[1, 2], [IMG, IMG]])
    with pytest.raises(ValueError, match="sample 'b': 2"):
        splice_image_features(ids, torch.ones_like(ids), _IdEmbed(), [torch.zeros(1, 1)], sample_ids=['a', 'b'])


@pytest.mark.parametrize('cut', ['split', 'unbind', 'gap', 'reordered'])
def test_per_image_views_splice_like_separate_tensors(cut):
    """Views cut from one encoder output (packed without a copy) and any other list give the same rows and grads."""
    ids = torch.tensor([[1, IMG, 2], [IMG, 3, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    embed = torch.nn.Embedding(10, 4)
    source = torch.randn(6, 4, requires_grad=True)
    if cut == 'split':
        feats = list(source.split([2, 4]))
    elif cut == 'unbind':
        feats = list(source.reshape(2, 3, 4).unbind(0))
    elif cut == 'gap':
        feats = [source[:2], source[3:]]
    else:
        feats = [source[4:], source[:4]]
    out = splice_image_features(ids, mask, embed, feats)
    copies = [f.detach().clone().requires_grad_(True) for f in feats]
    ref = splice_image_features(ids, mask, embed, copies)
    assert torch.equal(out.inputs_embeds, ref.inputs_embeds) and torch.equal(out.image_mask, ref.image_mask)
    weights = torch.randn_like(out.inputs_embeds)
    (out.inputs_embeds * weights).sum().backward()
    (ref.inputs_embeds * weights).sum().backward()
    expected = torch.zeros_like(source)
    rows = {'split': [(0, 2), (2, 6)], 'unbind': [(0, 3), (3, 6)], 'gap': [(0, 2), (3, 6)],
            'reordered': [(4, 6), (0, 4)]}[cut]
    for (a, b), c in zip(rows, copies):
        expected[a:b] += c.grad
    assert torch.equal(source.grad, expected)
