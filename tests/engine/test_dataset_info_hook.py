"""DatasetInfoHook: decoded sample with its label mask, skip counts from batches."""
import json
import logging
from types import SimpleNamespace

import pytest
import torch

from mllm_align.constants import IGNORE_INDEX as IGN
from mllm_align.constants import IMAGE_TOKEN_INDEX as IMG
from mllm_align.data.collate import llava_collate_fn
from mllm_align.engine.hooks.dataset_info_hook import DatasetInfoHook, decode_sample


class _Tok:
    def decode(self, ids):
        return ''.join(f'<{i}>' for i in ids)


def test_decode_sample_marks_images_and_supervised_runs():
    full, target = decode_sample([1, IMG, 2, 3, 4], [IGN, IGN, IGN, 3, 4], _Tok())
    assert full == '<1><image><2><3><4>'
    assert target == '[…]<3><4>'


def test_skip_counts_travel_with_batches_and_are_logged(caplog):
    items = [dict(input_ids=torch.tensor([1, 2]), labels=torch.tensor([IGN, 2]), pixel_values=None,
                  skipped={'missing_image': 2}),
             dict(input_ids=torch.tensor([3]), labels=torch.tensor([3]), pixel_values=None,
                  skipped={'missing_image': 1, 'too_long': 1})]
    batch = llava_collate_fn(items)
    assert batch['data']['skipped'] == {'missing_image': 3, 'too_long': 1}
    hook = DatasetInfoHook()
    logger = logging.getLogger('dataset_info_test')
    runner = SimpleNamespace(logger=logger, iter=0)
    with caplog.at_level(logging.WARNING, logger='dataset_info_test'):
        hook.after_train_iter(runner, 0, batch)
        hook.after_train_iter(runner, 1, llava_collate_fn(items[:1]))
        hook.after_train(runner)
    assert "6 bad training samples were skipped" in caplog.text
    assert "'missing_image': 5" in caplog.text and "'too_long': 1" in caplog.text


def test_skip_mode_dataset_marks_the_replacement_item(tmp_path):
    from PIL import Image
    from transformers import CLIPImageProcessor

    from mllm_align.data import LLaVADataset
    from mllm_align.testing.tiny_tokenizer import build_tiny_tokenizer
    Image.new('RGB', (8, 8)).save(tmp_path / 'ok.png')
    records = [dict(id='bad', image='missing.png', conversations=[
                   dict(**{'from': 'human', 'value': '<image>'}), dict(**{'from': 'gpt', 'value': 'a cat'})]),
               dict(id='good', image='ok.png', conversations=[
                   dict(**{'from': 'human', 'value': '<image>'}), dict(**{'from': 'gpt', 'value': 'a dog'})])]
    (tmp_path / 'd.json').write_text(json.dumps(records))
    tok = build_tiny_tokenizer('qwen2', ['a cat', 'a dog'])
    proc = CLIPImageProcessor(size={'shortest_edge': 8}, crop_size={'height': 8, 'width': 8})
    ds = LLaVADataset(str(tmp_path / 'd.json'), str(tmp_path), tok, 'plain', proc, num_image_tokens=4,
                      on_bad_sample='skip')
    item = ds[0]
    assert item['id'] == 'good' and item['skipped'] == {'missing_image': 1}
    assert 'skipped' not in ds[1]


def test_notices_and_duplicates_are_logged(tmp_path, caplog):
    from transformers import CLIPImageProcessor

    from mllm_align.data import LLaVADataset
    from mllm_align.testing.tiny_tokenizer import build_tiny_tokenizer
    turns = [{'from': 'human', 'value': 'q'}, {'from': 'gpt', 'value': 'a cat ' * 30}]
    (tmp_path / 'd.jsonl').write_text('\n'.join(json.dumps(dict(id='same', conversations=turns))
                                                for _ in range(3)) + '\n')
    tok = build_tiny_tokenizer('qwen2', ['a cat', 'q'])
    proc = CLIPImageProcessor(size={'shortest_edge': 8}, crop_size={'height': 8, 'width': 8})
    ds = LLaVADataset(str(tmp_path / 'd.jsonl'), None, tok, 'plain', proc, max_length=20,
                      on_bad_sample='skip', max_image_pixels=None)
    hook = DatasetInfoHook(interval=2)
    logger = logging.getLogger('dataset_info_notices')
    runner = SimpleNamespace(logger=logger, iter=0, train_dataloader=SimpleNamespace(dataset=ds))
    with caplog.at_level(logging.INFO, logger='dataset_info_notices'):
        hook.before_train(runner)
        assert "on_bad_sample='skip', max_length=20, max_image_pixels=no limit" in caplog.text
        assert '2 records repeat the `id` of an earlier record (1 ids occur more than once)' in caplog.text
        assert f"'same' at {tmp_path / 'd.jsonl'}, line 1, {tmp_path / 'd.jsonl'}, line 2" in caplog.text
        batch = llava_collate_fn([ds[0], ds[1]])
        assert batch['data']['notices'] == {'truncated': 2}
        caplog.clear()
        hook.after_train_iter(runner, 0, batch)  # iteration 1: not a multiple of 2
        assert 'truncated' not in caplog.text
        runner.iter = 1
        hook.after_train_iter(runner, 1, llava_collate_fn([ds[2]]))
        assert '3 training samples were truncated to max_length on this rank (100.0 % of 3' in caplog.text
        caplog.clear()
        hook.after_train(runner)
    assert '3 training samples were truncated' in caplog.text and 'raise max_length' in caplog.text
    assert 'skipped' not in caplog.text
    with pytest.raises(ValueError, match='interval must be an int >= 0'):
        DatasetInfoHook(interval=-1)
