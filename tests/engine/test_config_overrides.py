"""--cfg-options: PART 1 variables re-evaluate the config (base files and derived values too); nothing is ignored."""
import argparse
import json
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import DATASETS

from mllm_align.engine.config_checks import ConfigKeyError
from mllm_align.engine.config_overrides import CfgOptionsAction, load_config
from mllm_align.engine.launch import prepare_config
from mllm_align.engine.loops import check_warmup_length

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / 'projects/llava/configs/pretrain/llava_v15_7b_pretrain_tiny_cpu.py')
INHERITS = str(REPO / 'tests/engine/fixtures/moca_inherits_tiny_cpu.py')  # read_base() of TINY + MoCa


def _parse(*items: str) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction)
    return parser.parse_args(['--cfg-options', *items]).cfg_options


def _mir_hook(cfg):
    return next(h for h in cfg.custom_hooks if h.type.__name__ == 'MIRHook')


@pytest.mark.parametrize('config', [TINY, INHERITS], ids=['tiny_twin', 'inheriting_recipe'])
def test_part1_override_reaches_every_dict_built_from_it(config):
    before = prepare_config(config)
    cfg = prepare_config(config, cfg_options=_parse(
        'data_path=/data/mine.json', 'image_folder=/data/imgs', 'warmup_ratio=0.3', 'template=vicuna_v1',
        'dataloader_num_workers=2', 'max_epochs=2'))
    dataset = cfg.train_dataloader.dataset
    assert (dataset.data_path, dataset.image_folder) == ('/data/mine.json', '/data/imgs')
    assert (_mir_hook(cfg).images, _mir_hook(cfg).image_folder) == ('/data/mine.json', '/data/imgs')
    assert cfg.model.template == dataset.template == 'vicuna_v1'
    warmup, cosine = cfg.param_scheduler
    assert warmup.end == pytest.approx(0.6) and cosine.begin == pytest.approx(0.6)  # warmup_ratio * max_epochs
    assert cosine.end == 2 and cfg.train_cfg.max_epochs == 2
    assert cfg.train_dataloader.num_workers == 2 and cfg.train_dataloader.persistent_workers is True  # derived
    # the file name (work dir, logs) is the user's, not the temporary mirror's; nothing else moved
    assert cfg.filename == config and cfg.work_dir == before.work_dir
    assert cfg.model.llm == before.model.llm and cfg.optim_wrapper == before.optim_wrapper


def test_inheriting_recipe_keeps_its_own_settings_and_takes_its_own_part1():
    cfg = prepare_config(INHERITS, cfg_options={'moca_init_std': 0.5, 'lr': 5e-4})
    assert cfg.model.plugins.moca.init_std == 0.5
    assert cfg.optim_wrapper.optimizer.lr == 5e-4  # built in the base file
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys.moca.decay_mult == 0.0  # set in the recipe


def _at(cfg, dotted: str):
    node = cfg
    for part in dotted.split('.'):
        node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
    return node


_VW = 'projects/visual_words/configs'
_MISTRAL_SFT_TWIN = f'{_VW}/finetune/llava_mistral_7b_vw_finetune_tiny_cpu.py'


# A method twin imports its base twin and, by name, the method's settings and blocks from its own recipe:
# a method variable is assigned in that recipe (or one it imports), a base variable in the base recipe,
# tiny_cpu.py or the base twin; each must still reach the fields.
@pytest.mark.parametrize('twin, options, expected', [
    ('projects/moca/configs/pretrain/llava_v15_7b_moca_pretrain_tiny_cpu.py',
     {'moca_init_std': 0.5, 'data_path': '/data/mine.json', 'warmup_ratio': 0.3, 'llm_name_or_path': 'llm/x'},
     {'model.plugins.moca.init_std': 0.5, 'train_dataloader.dataset.data_path': '/data/mine.json',
      'custom_hooks.2.images': '/data/mine.json', 'param_scheduler.0.end': 0.3, 'model.llm.path': 'llm/x',
      'model.tokenizer.path': 'llm/x', 'train_dataloader.dataset.tokenizer.path': 'llm/x',
      'optim_wrapper.paramwise_cfg.custom_keys.moca.decay_mult': 0.0}),
    (f'{_VW}/pretrain/llava_v15_7b_vw_moca_cal_pretrain_tiny_cpu.py',
     {'moca_init_std': 0.1, 'cal_alpha': 2.0, 'cal_window': 1, 'vw_weight': 0.5, 'batch_size': 2},
     {'model.plugins.moca.init_std': 0.1, 'model.plugins.cal.alpha': 2.0, 'model.plugins.cal.window': 1,
      'model.plugins.visual_words.weight': 0.5, 'train_dataloader.sampler.per_device_batch_size': 2}),
    (_MISTRAL_SFT_TWIN, {'template': 'vicuna_v1', 'vw_pif': True, 'lr': 1e-3},
     {'model.template': 'vicuna_v1', 'train_dataloader.dataset.template': 'vicuna_v1',
      'model.plugins.visual_words.pif': True, 'optim_wrapper.optimizer.lr': 1e-3}),
    (f'{_VW}/finetune/llava_v15_7b_vw_pif_finetune_tiny_cpu.py', {'vw_pif': False, 'pretrained_pth': 'a.pth'},
     {'model.plugins.visual_words.pif': False, 'model.pretrained_pth': 'a.pth'}),
], ids=['moca', 'vw_moca_cal', 'mistral_sft', 'vw_pif_sft'])
def test_method_and_base_variables_on_a_method_twin_reach_its_fields(twin, options, expected):
    before = prepare_config(str(REPO / twin))
    cfg = prepare_config(str(REPO / twin), cfg_options=options)
    assert {key: _at(cfg, key) for key in expected} == pytest.approx(expected)
    assert list(cfg.model.plugins) == list(before.model.plugins)  # plug-in order unchanged
    assert {key: _at(before, key) for key in expected} != pytest.approx(expected)  # the options changed them


def test_method_twin_keeps_its_recipes_template_unless_told():
    cfg = prepare_config(str(REPO / _MISTRAL_SFT_TWIN))
    assert cfg.model.template == cfg.train_dataloader.dataset.template == 'mistral'


def test_warmup_ratio_override_fixes_what_the_warmup_error_asks_for():
    with pytest.raises(ValueError, match='Raise `warmup_ratio`'):
        check_warmup_length(prepare_config(TINY).param_scheduler, epoch_length=10)  # 0.1 × 10 = 1 iteration
    check_warmup_length(prepare_config(TINY, cfg_options={'warmup_ratio': 0.3}).param_scheduler, epoch_length=10)


def test_overridden_data_path_is_the_data_the_dataset_reads(tiny_assets, tmp_path):
    rows = json.loads((REPO / 'data/tiny/shapes/pretrain.json').read_text())[:5]
    (tmp_path / 'five.json').write_text(json.dumps(rows))
    cfg = prepare_config(TINY, cfg_options={'data_path': str(tmp_path / 'five.json'),
                                            'image_folder': str(REPO / 'data/tiny/shapes')})
    assert len(DATASETS.build(cfg.train_dataloader.dataset)) == 5


def test_values_parse_like_cfg_options():
    cfg = prepare_config(TINY, cfg_options=_parse('betas=(0.8,0.95)', 'lr=5e-4', 'batch_size=4',
                                                  'evaluation_inputs=[Hi,Bye]', 'save_total_limit=None'))
    assert cfg.optim_wrapper.optimizer.betas == (0.8, 0.95) and cfg.optim_wrapper.optimizer.lr == 5e-4
    assert cfg.train_dataloader.batch_size == 4 and cfg.train_dataloader.sampler.per_device_batch_size == 4
    chat = next(h for h in cfg.custom_hooks if h.type.__name__ == 'EvaluateChatHook')
    assert chat.evaluation_inputs == ['Hi', 'Bye']
    assert cfg.default_hooks.checkpoint.max_keep_ckpts is None


def test_item_without_equals_is_a_usage_error_naming_it(capsys):
    with pytest.raises(SystemExit):
        _parse('model.freeze_llm')
    err = capsys.readouterr().err
    assert "'model.freeze_llm' is not KEY=VALUE" in err and 'model.freeze_llm=VALUE' in err


def test_unknown_key_names_the_closest_part1_variable():
    with pytest.raises(ConfigKeyError, match="'datapath' is neither.*did you mean 'data_path'"):
        prepare_config(TINY, cfg_options={'datapath': 'x.json'})


def test_dotted_key_into_a_part1_dict_is_refused_with_the_nested_key():
    with pytest.raises(ConfigKeyError, match=r'would be ignored.*train_dataloader\.dataset\.data_path'):
        prepare_config(TINY, cfg_options={'train_dataset.data_path': 'x.json'})


def test_part1_key_on_a_loaded_config_is_refused_with_the_keys_holding_its_value():
    with pytest.raises(ConfigKeyError) as err:
        load_config(Config.fromfile(TINY), {'data_path': 'x.json'})
    assert 'train_dataloader.dataset.data_path' in str(err.value) and 'custom_hooks.2.images' in str(err.value)


def test_variable_assigned_in_a_block_or_a_non_literal_value_is_refused(tmp_path):
    config = tmp_path / 'blocky.py'
    config.write_text('lr = 1.0\nif lr > 0:\n    lr = 2.0\nmodel = dict(lr=lr)\n')
    with pytest.raises(ConfigKeyError, match="'lr' is also assigned inside a block"):
        load_config(str(config), {'lr': 3.0})
    with pytest.raises(ConfigKeyError, match='not a literal value'):
        load_config(TINY, {'data_path': Path('x.json')})


def test_max_iters_alone_makes_max_epochs_give_way():
    cfg = prepare_config(TINY, cfg_options=_parse('train_cfg.max_iters=100'))
    assert cfg.train_cfg.max_iters == 100 and cfg.train_cfg.max_epochs is None
    cfg = prepare_config(TINY, cfg_options=_parse('train_cfg.max_epochs=None', 'train_cfg.max_iters=4'))
    assert (cfg.train_cfg.max_epochs, cfg.train_cfg.max_iters) == (None, 4)  # the form tests already use


@pytest.mark.parametrize('key, message', [
    ('default_hooks.chekpoint.interval', "default_hooks has no key 'chekpoint'.*did you mean 'checkpoint'"),
    ('custom_hooks.7.interval', 'custom_hooks is a list of 3 items'),
    ('model.template.name', 'model.template is .plain.*not a dict'),
    ('optim_wrapper.clip_grad.max_nrom', "did you mean 'max_norm'"),
    ('train_cfg.max_iter', "TrainLoop — did you mean 'max_iters'"),
])
def test_nested_key_must_exist_or_be_accepted(key, message):
    with pytest.raises(ConfigKeyError, match=message):
        prepare_config(TINY, cfg_options={key: 2})


def test_new_keys_the_component_accepts_are_allowed():
    cfg = prepare_config(TINY, cfg_options={'optim_wrapper.clip_grad.norm_type': 1.0,
                                            'default_hooks.checkpoint.save_last': False, 'val_cfg': None})
    assert cfg.optim_wrapper.clip_grad.norm_type == 1.0 and cfg.default_hooks.checkpoint.save_last is False
