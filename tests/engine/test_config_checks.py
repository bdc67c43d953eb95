"""Start-of-run config checks: component keys against constructors, settings that must agree."""
import json
import shutil
from pathlib import Path

import pytest
from mmengine.config import Config

from mllm_align.engine.config_checks import (
    ConfigKeyError,
    ConfigMismatchError,
    accepted_keys,
    check_component_keys,
    tower_tokens,
)
from mllm_align.engine.launch import check_config_keys, prepare_config

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py')
CONFIGS = sorted(str(p.relative_to(REPO)) for p in REPO.glob('projects/*/configs/*/*.py'))


@pytest.mark.parametrize('config', CONFIGS)
def test_every_shipped_config_passes_the_start_checks(config):
    check_config_keys(Config.fromfile(str(REPO / config)))


@pytest.mark.parametrize('key, message', [
    ('default_hooks.checkpoint.intervall', "CheckpointHook — did you mean 'interval'"),
    ('default_hooks.logger.intervl', "LoggerHook — did you mean 'interval'"),
    ('custom_hooks.1.every_n_iter', "EvaluateChatHook — did you mean 'every_n_iters'"),
    ('param_scheduler.0.start_factr', "LinearLR — did you mean 'start_factor'"),
    ('optim_wrapper.optimizer.weight_decy', "AdamW — did you mean 'weight_decay'"),
    ('optim_wrapper.accumulative_count', "OptimWrapper — did you mean 'accumulative_counts'"),
    ('train_dataloader.num_worker', "DataLoader.*did you mean 'num_workers'"),
    ('train_dataloader.dataset.max_lenght', "LLaVADataset — did you mean 'max_length'"),
    ('train_dataloader.sampler.mega_batch', "LengthGroupedSampler — did you mean 'mega_batch_mult'"),
    ('model.freeze_lm', "LLaVAModel — did you mean 'freeze_llm'"),
    ('model.visual_encoder.select_layers', "VisionTower — did you mean 'select_layer'"),
])
def test_misspelt_component_key_fails_at_start_naming_class_and_match(key, message):
    with pytest.raises(ConfigKeyError, match=message):
        prepare_config(TINY, cfg_options={key: 2})


def test_typo_written_in_the_config_file_is_caught_too():
    cfg = Config.fromfile(TINY)
    cfg.default_hooks.checkpoint['intervall'] = 2  # as if the config file said so
    with pytest.raises(ConfigKeyError, match="'default_hooks.checkpoint.intervall'.*did you mean 'interval'"):
        check_config_keys(cfg)


def test_registry_names_resolve_like_classes():
    cfg = Config(dict(model=dict(type='X'), default_hooks=dict(checkpoint=dict(type='CheckpointHook', intervall=1)),
                      param_scheduler=[dict(type='LinearLR', strat_factor=0.1)]))
    with pytest.raises(ConfigKeyError, match="CheckpointHook — did you mean 'interval'"):
        check_component_keys(cfg)
    del cfg.default_hooks.checkpoint['intervall']
    with pytest.raises(ConfigKeyError, match="LinearLR — did you mean 'start_factor'"):
        check_component_keys(cfg)


def test_accepted_keys_follow_kwargs_up_the_mro_and_stay_open_for_kwargs_functions():
    class Base:
        def __init__(self, a: int = 0) -> None:
            self.a = a

    class Child(Base):
        def __init__(self, b: int = 0, **kwargs) -> None:
            super().__init__(**kwargs)

    def loader(path: str, **kwargs) -> None:
        pass

    assert accepted_keys(Child) == {'a', 'b'}
    assert accepted_keys(loader) is None


def test_template_mismatch_names_both_keys_and_the_part1_fix():
    with pytest.raises(ConfigMismatchError) as err:
        prepare_config(TINY, cfg_options={'model.template': 'vicuna_v1'})
    msg = str(err.value)
    assert "model.template = 'vicuna_v1'" in msg and "train_dataloader.dataset.template = 'plain'" in msg
    assert '--cfg-options template=' in msg


def test_tokenizer_mismatch_names_both_paths():
    with pytest.raises(ConfigMismatchError, match=r"tokenizer.*model\.tokenizer = 'data/tiny/llm/llama'.*"
                                                  r"train_dataloader\.dataset\.tokenizer = 'data/tiny/llm/vicuna'"):
        prepare_config(TINY, cfg_options={'train_dataloader.dataset.tokenizer.path': 'data/tiny/llm/vicuna'})


def test_hook_image_processor_must_match_the_dataset():
    with pytest.raises(ConfigMismatchError, match=r'image processor.*custom_hooks\.1\.image_processor = '
                                                  r"'data/tiny/vision/siglip'"):
        prepare_config(TINY, cfg_options={'custom_hooks.1.image_processor.path': 'data/tiny/vision/siglip'})


def test_image_token_count_is_checked_against_the_tower_config(tiny_assets):
    with pytest.raises(ConfigMismatchError, match=r'num_image_tokens = 17 but the vision tower.*produces 16.*'
                                                  r'--cfg-options num_image_tokens=16'):
        prepare_config(TINY, cfg_options={'num_image_tokens': 17})
    with pytest.raises(ConfigMismatchError, match="select_feature='cls_patch'.*produces 17"):
        prepare_config(TINY, cfg_options={'model.visual_encoder.select_feature': 'cls_patch'})
    prepare_config(TINY, cfg_options={'model.visual_encoder.select_feature': 'cls_patch', 'num_image_tokens': 17})


@pytest.mark.parametrize('family', ['clip', 'siglip', 'dinov2'])
def test_token_count_from_config_json_equals_the_built_tower(tiny_assets, family):
    from mllm_align.models import VisionTower
    path = str(REPO / 'data/tiny/vision' / family)
    for feature in ('patch', 'cls_patch'):
        assert tower_tokens(path, feature)[0] == VisionTower(path, select_feature=feature).num_tokens


def test_image_processor_size_must_match_the_tower(tiny_assets, tmp_path):
    clip = tmp_path / 'clip'
    shutil.copytree(REPO / 'data/tiny/vision/clip', clip)
    proc = json.loads((clip / 'preprocessor_config.json').read_text())
    proc['crop_size'] = {'height': 64, 'width': 64}
    (clip / 'preprocessor_config.json').write_text(json.dumps(proc))
    with pytest.raises(ConfigMismatchError, match='outputs 64×64 images but the vision tower.*image_size=32'):
        prepare_config(TINY, cfg_options={'visual_encoder_name_or_path': str(clip)})


def test_sampler_batch_must_follow_the_dataloader_batch():
    with pytest.raises(ConfigMismatchError, match=r'per_device_batch_size = 8 but .*4 × 1 = 4.*batch_size=N'):
        prepare_config(TINY, cfg_options={'train_dataloader.batch_size': 4})


def test_loop_with_both_lengths_is_rejected_at_start():
    with pytest.raises(ConfigMismatchError, match='both max_epochs = 1 and max_iters = 5'):
        prepare_config(TINY, cfg_options={'train_cfg.max_iters': 5, 'train_cfg.max_epochs': 1})
