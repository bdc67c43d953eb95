"""Every shipped config: it loads, recipes and twins pair up, and each differs from its parent only where declared.

A real recipe is a ``projects/*/configs/*/*.py`` file without the ``_tiny_cpu`` suffix; its twin is the
same name with it. Method recipes inherit a base recipe (or a single-method recipe) through
``read_base()`` and may differ from it only in their plug-in, its optimizer keys, its hooks and its
own PART 1 settings; they state each method's block once, as named fragments (``moca_plugins``,
``moca_paramwise_cfg``, ``cal_plugins``, ``vw_plugins``). The twin of a base recipe imports the
recipe and then ``projects/_base_/tiny_cpu.py`` and writes the tiny values into the fields; the twin
of a method recipe imports its base recipe's twin and, from its own recipe, the method's settings and
fragments. Either may differ from its recipe only in paths, sizes, precision and intervals (the
allow-lists below). Real recipes point at models that do not exist here: they are only loaded
(``Config.fromfile`` reads no model file), while every twin's model is built from the tiny assets.
"""
from __future__ import annotations

import ast
import fnmatch
import os
from pathlib import Path
from typing import Any

import pytest
from mmengine.config import Config

from mllm_align.engine.config_checks import RUNNER_KEYS, check_component_keys
from mllm_align.engine.config_overrides import load_config, part1_variables
from mllm_align.engine.launch import prepare_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in REPO.glob('projects/*/configs/*/*.py'))
# The demo's configs (projects/demo/) run a shipped recipe on real small models at laptop scale: they are
# their own CPU-sized runs (tests/test_demo.py trains them), so they have no tiny twin and are checked apart.
DEMOS = [c for c in CONFIGS if c.startswith('projects/demo/')]
# The law's stage-1 configs (projects/law/) change the vision representation, not a plug-in: the recipe inherits a
# base recipe, its twin that recipe's twin, each differing only in the representation (checked apart, below).
LAW = [c for c in CONFIGS if c.startswith('projects/law/')]
TWINS = [c for c in CONFIGS if c.endswith('_tiny_cpu.py') and c not in DEMOS + LAW]
RECIPES = [c for c in CONFIGS if not c.endswith('_tiny_cpu.py') and c not in DEMOS + LAW]
TINY_BASE = 'projects/_base_/tiny_cpu.py'
SHARED_BASES = ['projects/_base_/default_loader.py',  # PART 3's DataLoader settings
                'projects/_base_/default_runtime.py', 'projects/_base_/default_schedule.py']  # PART 5, PART 4

# Dotted keys (fnmatch patterns) where a twin may differ from its recipe.
TWIN_MAY_DIFFER = (
    # tiny local models and data (LLaVA: llm/visual_encoder parts; Qwen2-VL: one HF directory, model.path)
    'model.llm.path', 'model.visual_encoder.path', 'model.path', 'model.tokenizer.path', 'model.pretrained_pth',
    'tokenizer.path', 'image_processor.path', 'model.image_processor.path',
    '*dataset.data_path', '*dataset.image_folder', '*dataset.tokenizer.path', '*dataset.image_processor.path',
    'custom_hooks.*.image_processor.path', 'custom_hooks.*.images', 'custom_hooks.*.image_folder',
    'custom_hooks.*.evaluation_images.*', 'custom_hooks.*.evaluation_inputs.*',
    # sizes
    '*dataset.max_length', '*dataset.num_image_tokens', 'model.max_new_tokens',
    '*image_processor.min_pixels', '*image_processor.max_pixels',  # Qwen2-VL's dynamic resolution
    'train_dataloader.batch_size', 'train_dataloader.sampler.per_device_batch_size',
    'train_dataloader.num_workers', 'train_dataloader.persistent_workers', 'train_dataloader.pin_memory',
    'train_dataloader.prefetch_factor',
    'custom_hooks.*.eval_num',
    # precision (fp32, plain OptimWrapper) and the lr a tiny random model needs
    'model.llm.dtype', 'model.visual_encoder.dtype', 'model.llm.attn_implementation',
    'model.dtype', 'model.attn_implementation',
    'optim_wrapper.type', 'optim_wrapper.loss_scale', 'optim_wrapper.dtype', 'optim_wrapper.optimizer.lr',
    # iterations and intervals
    'param_scheduler.0.end', 'param_scheduler.1.begin', 'default_hooks.checkpoint.interval',
    'default_hooks.checkpoint.max_keep_ckpts', 'custom_hooks.*.every_n_iters', 'custom_hooks.*.interval',
    # the fragments of projects/_base_/tiny_cpu.py that hold the values above
    'tiny_*',
    # CoLVA: a base inside the model, a vision expert, a mixture of datasets, the stage-1 hand-off
    'model.base.path', 'model.base.tokenizer.path', 'model.base.image_processor.path', 'model.base.dtype',
    'model.base.attn_implementation', 'model.base.max_new_tokens', 'model.base.image_processor.min_pixels',
    'model.base.image_processor.max_pixels', 'model.expert.path', 'model.expert.dtype', 'model.expert.image_size',
    'model.adapter_pth', 'optim_wrapper.accumulative_counts', '*dataset.data_root', '*dataset.expert_image_size',
    '*dataset.expert_grid', 'model.base.max_num_tiles', '*image_processor.max_num_tiles',
    '*dataset.image_root', '*datasets.*.data_path', '*datasets.*.image_folder', '*datasets.*.image_root',
    '*datasets.*.tokenizer.path', '*datasets.*.image_processor.*', '*datasets.*.max_length',
    '*datasets.*.num_image_tokens', '*datasets.*.expert_image_size', '*datasets.*.expert_grid',
)
# Dotted keys where a method recipe may differ from the recipe it inherits.
METHOD_MAY_DIFFER = (
    'model.plugins', 'model.plugins.*', 'optim_wrapper.paramwise_cfg.*', 'custom_hooks.*',
    'moca_*', 'cal_*', 'vw_*',  # the method's PART 1 settings
    'pretrained_pth', 'model.pretrained_pth', 'work_dir', 'experiment_name',
)
# Recipes that also change the LLM they inherit (VW-LMM on Mistral-7B: another LLM and its chat template).
LLM_SWAP = ('llm_name_or_path', 'template', 'model.llm.path', 'model.template', '*tokenizer.path', '*dataset.template')
METHOD_EXTRA = {
    'projects/visual_words/configs/pretrain/llava_mistral_7b_vw_pretrain.py': LLM_SWAP,
    'projects/visual_words/configs/finetune/llava_mistral_7b_vw_finetune.py': LLM_SWAP,
}


# Dotted keys where a demo config may differ from the recipe it inherits: a twin's, plus the small real models'
# settings (DINOv2 read at 112 px and pooled; SmolLM2's chat template), a schedule counted in iterations, LoRA.
DEMO_MAY_DIFFER = TWIN_MAY_DIFFER + LLM_SWAP + (
    'model.visual_encoder.select_layer', 'model.visual_encoder.image_size', 'model.visual_encoder.pool',
    '*image_processor.size.*', '*image_processor.crop_size.*', 'model.pretrained_pth',
    'param_scheduler.*', 'train_cfg.max_iters', 'train_cfg.max_epochs', 'default_hooks.logger.interval',
    'model.freeze_llm', 'model.gradient_checkpointing', 'model.llm_lora.*', 'custom_hooks.*',
    'demo_*',
)


# Dotted keys where a law config may differ from what it inherits: the vision representation and its token count
# (and, for the tiny twin, a run counted in iterations for the sweep).
LAW_MAY_DIFFER = (
    'model.visual_encoder', 'model.visual_encoder.*', '*image_processor', '*image_processor.*',
    '*dataset.num_image_tokens', 'num_image_tokens', 'image_processor.*', 'vision_*', 'law_*', 'clip_*',
    'openclip_*', 'siglip_*', 'dinov2_*', 'tiny_vision', 'tiny_tower.*',
)
LAW_TWIN_ITERATIONS = ('max_iters', 'save_steps', 'train_cfg.max_iters', 'train_cfg.max_epochs',
                       'default_hooks.checkpoint.interval')


def twin_of(recipe: str) -> str:
    return recipe[:-len('.py')] + '_tiny_cpu.py'


def read_base_imports(config: str) -> list[tuple[str, list[str]]]:
    """``(repo-relative module file, imported names)`` of each import inside ``with read_base():``."""
    tree = ast.parse((REPO / config).read_text(encoding='utf-8'))
    found = []
    for stmt in tree.body:
        if isinstance(stmt, ast.With) and any(getattr(i.context_expr.func, 'id', None) == 'read_base'
                                              for i in stmt.items if isinstance(i.context_expr, ast.Call)):
            for sub in stmt.body:
                if not isinstance(sub, ast.ImportFrom) or sub.level == 0:
                    raise AssertionError(f'{config}: read_base() must hold relative `from ... import` lines only')
                base = Path(config).parent.joinpath(*(['..'] * (sub.level - 1)), *sub.module.split('.'))
                found.append((os.path.normpath(base.as_posix() + '.py'), [a.name for a in sub.names]))
    return found


def parent_recipe(config: str) -> str | None:
    """The recipe a recipe or twin inherits whole (``from X import *``, the first such import); None for a base."""
    return next((module for module, names in read_base_imports(config)
                 if names == ['*'] and not module.startswith('projects/_base_/')), None)


BASES = [r for r in RECIPES if parent_recipe(r) is None]  # written in full (LLaVA-1.5 stages, Qwen2-VL, …)
# Recipes that run their parent recipe at another model size (the released CoLVA 7B recipes keep every 2B setting):
# they change the model directory and the stage-1 hand-off only, and their twins are the parent's twin.
SIZE_VARIANTS = ['projects/colva/configs/pretrain/qwen2vl_7b_radio_align_pretrain.py',
                 'projects/colva/configs/finetune/qwen2vl_7b_radio_match_sft.py']
VARIANT_MAY_DIFFER = ('qwen2_vl_name_or_path', '*.path', 'pretrained_adapter_pth', 'model.adapter_pth')
METHODS = [r for r in RECIPES if r not in BASES and r not in SIZE_VARIANTS]


def base_of(recipe: str) -> str:
    """The base recipe at the end of ``recipe``'s ``read_base()`` chain of whole imports."""
    while recipe not in BASES:
        parent = parent_recipe(recipe)
        assert parent in RECIPES, f'the read_base() chain of {recipe} must end at a base recipe {BASES}'
        recipe = parent
    return recipe


def top_level(config: str) -> dict[str, Any]:
    """``Config.fromfile(config).to_dict()``: PART 1 settings, fragments and runner keys (imported classes left out)."""
    return Config.fromfile(str(REPO / config)).to_dict()


def flatten(value: Any, prefix: str = '') -> dict[str, Any]:
    """``{dotted key: leaf}`` of nested dicts and lists (empty containers are leaves too)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f'{prefix}.{key}' if prefix else str(key)))
        return out
    if isinstance(value, (list, tuple)) and value:
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f'{prefix}.{i}'))
        return out
    return {prefix: value}


def effective(config: str, part1: bool = True) -> dict[str, Any]:
    """The flattened config: runner keys, the PART 2/3 dicts (``tokenizer``, ``train_dataset``…) and PART 1.

    Classes appear as their import path (``'mmengine.optim.OptimWrapper'``), as ``Config.to_dict`` writes them.

    With ``part1=False`` the PART 1 settings (top-level values that are neither runner keys nor
    dicts) are left out: a twin rebinds them to tiny values, and the fields built from them are what
    the runner reads.
    """
    cfg = Config.fromfile(str(REPO / config)).to_dict()
    return flatten({k: v for k, v in cfg.items()
                    if not k.startswith('_') and (part1 or k in RUNNER_KEYS or isinstance(v, dict))})


def differences(parent: dict[str, Any], child: dict[str, Any], allowed: tuple[str, ...]) -> list[str]:
    """Dotted keys whose value differs (or exists on one side only) and that no pattern in ``allowed`` covers."""
    bad = []
    for key in sorted(set(parent) | set(child)):
        if parent.get(key, KeyError) == child.get(key, KeyError):
            continue
        if not any(fnmatch.fnmatchcase(key, pattern) for pattern in allowed):
            bad.append(f'{key}: {parent.get(key, "<absent>")!r} -> {child.get(key, "<absent>")!r}')
    return bad


@pytest.mark.parametrize('config', CONFIGS)
def test_every_config_loads(config):
    plugins = list(Config.fromfile(str(REPO / config)).model.get('plugins', {}))
    assert plugins == [name for name in ('moca', 'cal', 'visual_words') if name in plugins], \
        f'{config}: plug-ins must run in the order moca, cal, visual_words; found {plugins}'


def test_every_recipe_has_a_twin_and_every_twin_a_recipe():
    assert RECIPES and TWINS and 'projects/llava/configs/pretrain/llava_v15_7b_pretrain.py' in BASES
    assert [c for c in RECIPES if twin_of(c) not in TWINS] == [], 'recipes without a *_tiny_cpu.py twin'
    assert [t for t in TWINS if t not in map(twin_of, RECIPES)] == [], 'twins without a real recipe'


@pytest.mark.parametrize('recipe', BASES)
def test_base_twin_inherits_its_recipe_then_the_shared_tiny_values(recipe):
    assert read_base_imports(twin_of(recipe)) == [(recipe, ['*']), (TINY_BASE, ['*'])]


@pytest.mark.parametrize('recipe', BASES)
def test_base_recipe_takes_schedule_and_runtime_from_the_shared_bases(recipe):
    """One place for a runtime fix: every base recipe imports both shared files and rebuilds none of their dicts."""
    assert read_base_imports(recipe) == [(base, ['*']) for base in SHARED_BASES], \
        f'{recipe}: the read_base() block must import {SHARED_BASES} (whole), in that order'
    tree = ast.parse((REPO / recipe).read_text(encoding='utf-8'))
    shared = {name for base in SHARED_BASES for name in top_level(base) if name in RUNNER_KEYS}
    rebound = sorted(t.id for stmt in tree.body if isinstance(stmt, ast.Assign)
                     for t in stmt.targets if isinstance(t, ast.Name) and t.id in shared)
    assert rebound == [], f'{recipe} assigns {rebound} again: update their fields instead (.update(...))'


def literal_settings(cfg: Config) -> dict[str, Any]:
    """The PART 1 variables of ``cfg`` whose value is a Python literal (what ``--cfg-options`` can write)."""
    out = {}
    for name in sorted(part1_variables(cfg)):
        value = cfg[name]
        try:
            if ast.literal_eval(repr(value)) == value:
                out[name] = value
        except (ValueError, SyntaxError):  # dicts holding classes, fragments
            continue
    return out


@pytest.mark.parametrize('config', CONFIGS)
def test_no_part1_value_is_silently_left_out_of_the_dicts(config):
    """Writing each PART 1 value into every file of the read_base() chain changes nothing.

    A name rebound after ``read_base()`` does not reach the dicts a base file built from it; a config that
    rebinds one without updating those fields resolves differently once the value is written into the base
    too (what ``--cfg-options name=value`` does), and this test names the fields.
    """
    loaded = Config.fromfile(str(REPO / config))
    settings = literal_settings(loaded)
    assert {'data_path', 'batch_size', 'lr', 'warmup_ratio', 'max_epochs', 'save_steps'} <= set(settings)
    again = load_config(str(REPO / config), settings)
    assert differences(effective(config), flatten({k: v for k, v in again.to_dict().items()
                                                   if not k.startswith('_')}), ()) == []


@pytest.mark.parametrize('config', CONFIGS)
def test_every_config_sets_a_learning_rate(config):
    """``default_schedule.py`` has no lr on purpose: without one, AdamW would silently train at its default."""
    optimizer = Config.fromfile(str(REPO / config)).optim_wrapper.optimizer
    assert isinstance(optimizer.get('lr'), float) and optimizer.lr > 0, f'{config}: optim_wrapper.optimizer.lr'


@pytest.mark.parametrize('recipe', METHODS)
def test_method_twin_is_its_base_twin_plus_names_from_its_own_recipe(recipe):
    """The tiny values are written once, in the base twin; a method twin takes the method from its recipe."""
    twin = twin_of(recipe)
    imports = read_base_imports(twin)
    assert [module for module, _ in imports] == [twin_of(base_of(recipe)), recipe], \
        f'{twin} must import the base twin {twin_of(base_of(recipe))} (*) and then names from {recipe}'
    assert imports[0][1] == ['*'] and '*' not in imports[1][1], imports
    names = imports[1][1]
    mine, base = top_level(recipe), top_level(base_of(recipe))
    added = [k for k in mine if k not in base]  # the method's PART 1 settings and fragments
    assert sorted(set(added) - set(names)) == [], \
        f'{twin} must import what {recipe} adds to {base_of(recipe)} (so --cfg-options reaches it)'
    assert [n for n in names if n not in added and mine.get(n, KeyError) == base.get(n)] == [], \
        f'{twin} imports names that {recipe} neither adds nor changes'


@pytest.mark.parametrize('recipe', METHODS)
def test_method_recipe_states_its_plugins_as_named_fragments(recipe):
    """``model.plugins`` is the fragments ``*_plugins`` merged in order; ``paramwise_cfg`` is MoCa's fragment."""
    cfg = top_level(recipe)
    merged: dict[str, Any] = {}
    for name in [k for k in cfg if k.endswith('_plugins')]:
        assert name.split('_')[0] in ('moca', 'cal', 'vw'), f'{recipe}: fragment {name} not named for a method'
        merged.update(cfg[name])
    assert merged and list(merged.items()) == list(cfg['model']['plugins'].items()), \
        f'{recipe}: model.plugins must be exactly its *_plugins fragments, in plug-in order'
    assert cfg['optim_wrapper'].get('paramwise_cfg') == cfg.get('moca_paramwise_cfg')


@pytest.mark.parametrize('recipe', RECIPES)
def test_twin_differs_from_its_recipe_only_in_paths_sizes_precision_and_intervals(recipe):
    assert differences(effective(recipe, part1=False), effective(twin_of(recipe), part1=False), TWIN_MAY_DIFFER) == []


@pytest.mark.parametrize('recipe', METHODS)
def test_method_recipe_differs_from_what_it_inherits_only_in_its_method(recipe):
    parent = parent_recipe(recipe)
    assert parent in RECIPES, f'{recipe} must inherit a shipped recipe through read_base(); inherits {parent}'
    allowed = METHOD_MAY_DIFFER + METHOD_EXTRA.get(recipe, ())
    assert differences(effective(parent), effective(recipe), allowed) == []
    assert base_of(recipe) in BASES


@pytest.mark.parametrize('recipe', SIZE_VARIANTS)
def test_size_variant_changes_only_the_model_directory_and_its_twin_is_the_parents(recipe):
    parent = parent_recipe(recipe)
    assert parent in BASES, f'{recipe} must inherit a base recipe; inherits {parent}'
    assert differences(effective(parent), effective(recipe), VARIANT_MAY_DIFFER) == []
    assert read_base_imports(twin_of(recipe)) == [(twin_of(parent), ['*'])]
    assert effective(twin_of(recipe)) == effective(twin_of(parent))


@pytest.mark.parametrize('demo', DEMOS)
def test_demo_config_is_a_shipped_recipe_on_small_real_models(demo):
    parent = parent_recipe(demo)
    assert parent in RECIPES, f'{demo} must inherit a shipped recipe through read_base(); inherits {parent}'
    assert differences(effective(parent, part1=False), effective(demo, part1=False), DEMO_MAY_DIFFER) == []
    cfg = effective(demo, part1=False)
    assert cfg['model.llm.path'].startswith('data/real/') and cfg['train_dataloader.dataset.data_path'].startswith(
        'data/real/easy_vqa/'), 'the demo trains on what data/prepare_real.py writes'
    assert cfg['model.llm.dtype'] == 'float32' and cfg['optim_wrapper.type'] == 'mmengine.optim.OptimWrapper'
    gpu = load_config(str(REPO / demo), {'gpu': True}).to_dict()
    assert gpu['model']['llm']['dtype'] == 'bfloat16' and gpu['optim_wrapper']['dtype'] == 'bfloat16'
    assert gpu['train_dataloader']['batch_size'] == 4 * cfg['train_dataloader.batch_size']


@pytest.mark.parametrize('recipe', RECIPES)
def test_twin_runs_on_tiny_local_files_in_fp32(recipe):
    twin = effective(twin_of(recipe), part1=False)
    paths = {k: v for k, v in twin.items()
             if k.endswith(('.path', '.data_path', '.image_folder', '.data_root', '.image_root')) and v is not None}
    assert any(k.startswith('train_dataloader.dataset.') and k.endswith(('.data_path', '.data_root')) for k in paths)
    assert len(paths) >= 4
    assert [f'{k} = {v!r}' for k, v in paths.items() if not str(v).startswith('data/tiny/')] == [], \
        f'{twin_of(recipe)}: paths that are not tiny assets'
    dtypes = {k: v for k, v in twin.items() if k.startswith('model.') and k.endswith('.dtype') or k == 'model.dtype'}
    assert dtypes and set(dtypes.values()) == {'float32'}, f'{twin_of(recipe)}: {dtypes}'
    assert twin['optim_wrapper.type'] == 'mmengine.optim.OptimWrapper' and 'optim_wrapper.loss_scale' not in twin


def test_differences_name_every_key_outside_the_allow_list():
    recipe = effective(RECIPES[0], part1=False)
    twin = effective(twin_of(RECIPES[0]), part1=False)
    assert differences(recipe, twin, TWIN_MAY_DIFFER) == []
    changed = dict(twin, **{'model.freeze_llm': not twin['model.freeze_llm'], 'model.plugins.extra': 1})
    assert differences(recipe, changed, TWIN_MAY_DIFFER) == [
        f"model.freeze_llm: {recipe['model.freeze_llm']!r} -> {changed['model.freeze_llm']!r}",
        "model.plugins.extra: '<absent>' -> 1"]
    method = dict(recipe, **{'model.freeze_llm': changed['model.freeze_llm'], 'model.plugins.extra': 1})
    assert differences(recipe, method, METHOD_MAY_DIFFER) == [  # a plug-in is the method's; freezing is not
        f"model.freeze_llm: {recipe['model.freeze_llm']!r} -> {changed['model.freeze_llm']!r}"]


def test_part1_options_on_an_sft_twin_reach_the_fields_the_twin_rewrites(tiny_assets):
    twin = 'projects/cal/configs/finetune/llava_v15_7b_cal_finetune_tiny_cpu.py'
    llama = 'data/tiny/llm/llama'
    cfg = prepare_config(str(REPO / twin), cfg_options={'llm_name_or_path': llama, 'lr': 1e-3, 'cal_beta': 3.0,
                                                        'save_steps': 7})
    dataset = cfg.train_dataloader.dataset
    assert cfg.model.llm.path == cfg.model.tokenizer.path == dataset.tokenizer.path == llama
    assert cfg.optim_wrapper.optimizer.lr == 1e-3 and cfg.default_hooks.checkpoint.interval == 7
    assert cfg.model.plugins.cal.beta == 3.0  # set in the CAL pre-training recipe, imported by the SFT one


@pytest.mark.parametrize('recipe', RECIPES)
def test_every_twin_builds_its_model(recipe, tiny_assets, monkeypatch):
    from mmengine.registry import MODELS

    monkeypatch.chdir(REPO)  # the tiny paths are relative to the repository root
    cfg = Config.fromfile(twin_of(recipe))
    base_path = cfg.model.get('path') or cfg.model.get('base', {}).get('path', '')
    if str(base_path).rstrip('/').endswith('qwen2_vl'):  # built on its own, not by tiny_assets
        from mllm_align.testing.tiny_assets import build_tiny_qwen2_vl
        build_tiny_qwen2_vl(tiny_assets.root)
    if str(base_path).rstrip('/').endswith('internvl2_remote'):
        from mllm_align.testing.tiny_internvl import build_tiny_internvl
        build_tiny_internvl(tiny_assets.root)
    if 'expert' in cfg.model:  # CoLVA: the RADIO stand-in and the drawn data
        from mllm_align.testing.tiny_colva_data import build_tiny_colva_data
        from mllm_align.testing.tiny_radio import build_tiny_radio
        build_tiny_radio(tiny_assets.root)
        build_tiny_colva_data(tiny_assets.root)
    model = MODELS.build(cfg.model)
    assert list(model.plugins) == list(cfg.model.get('plugins', {}))
    assert any(p.requires_grad for p in model.parameters()), f'{twin_of(recipe)} builds a model with nothing to train'


# A law config on the demo's small real models (it imports projects/demo/_base_/easyvqa_real.py) is, like the
# demo, its own CPU-sized run: no tiny twin; it may differ from its base recipe as a demo does, in the representation.
LAW_REAL = [c for c in LAW if ('projects/demo/_base_/easyvqa_real.py', ['*']) in read_base_imports(c)]
LAW_RECIPES = [c for c in LAW if not c.endswith('_tiny_cpu.py') and c not in LAW_REAL]
LAW_TWINS = [twin_of(c) for c in LAW_RECIPES]


@pytest.mark.parametrize('recipe', LAW_RECIPES)
def test_law_recipe_is_a_base_recipe_with_another_vision_representation(recipe):
    parent = parent_recipe(recipe)
    assert parent in BASES, f'{recipe} must inherit a base recipe; inherits {parent}'
    assert differences(effective(parent), effective(recipe), LAW_MAY_DIFFER) == []
    twin = twin_of(recipe)
    assert parent_recipe(twin) == twin_of(parent), f'{twin} must inherit {twin_of(parent)}'
    assert differences(effective(twin_of(parent)), effective(twin), LAW_MAY_DIFFER + LAW_TWIN_ITERATIONS) == []


@pytest.mark.parametrize('config', LAW)
def test_every_law_setting_derives_encoder_processors_and_tokens_together(config):
    from mllm_align.engine.config_checks import check_settings_agree

    settings = Config.fromfile(str(REPO / config)).vision_settings
    assert len(settings) >= 4
    for name, entry in settings.items():
        cfg = load_config(str(REPO / config), {'vision_setting': name})
        assert cfg.model.visual_encoder.type == entry['visual_encoder']['type'], name
        assert cfg.train_dataloader.dataset.num_image_tokens == entry['num_image_tokens'], name
        procs = [cfg.train_dataloader.dataset.image_processor] + [h.image_processor for h in cfg.custom_hooks
                                                                  if 'image_processor' in h]
        assert all(p == entry['image_processor'] for p in procs), name
        check_settings_agree(cfg)  # token counts and processor sizes agree (where the model files exist)
        check_component_keys(cfg)  # a setting's dicts replace the recipe's whole (no merged leftover keys)


def test_law_recipes_twins_and_real_variant_are_all_there():
    assert LAW_RECIPES == ['projects/law/configs/pretrain/llava_v15_7b_law_pretrain.py']
    assert LAW_REAL == ['projects/law/configs/pretrain/smollm2_easyvqa_law_pretrain.py']
    assert sorted(LAW) == sorted(LAW_RECIPES + LAW_TWINS + LAW_REAL)


@pytest.mark.parametrize('config', LAW_REAL)
def test_law_real_variant_is_the_base_recipe_on_the_demos_models_with_another_representation(config):
    from mllm_align.engine.config_checks import check_settings_agree

    parent = parent_recipe(config)
    assert parent in BASES, f'{config} must inherit a base recipe (plain projector pre-training); inherits {parent}'
    allowed = DEMO_MAY_DIFFER + LAW_MAY_DIFFER
    assert differences(effective(parent, part1=False), effective(config, part1=False), allowed) == []
    cfg = Config.fromfile(str(REPO / config))
    assert not cfg.model.plugins and len(cfg.custom_hooks) == 2  # no MoCa, no MIRHook
    assert cfg.default_hooks.checkpoint.interval == cfg.train_cfg.max_iters <= 160  # the final one is saved
    for name, entry in cfg.vision_settings.items():
        flat = flatten({'enc': entry['visual_encoder'], 'proc': entry['image_processor']})
        paths = [v for k, v in flat.items() if k.endswith('.path')]
        assert paths and all(p.startswith('data/real/') for p in paths), (name, paths)
        assert entry['num_image_tokens'] == 16, name  # one grid for every setting (the docstring says why)
    native = {'vision_image_size': 224, 'vision_pool': 1}  # the towers' own grids (where the sweep scores C)
    expected = dict(random_vit=256, efficientnet_lite0=49, dinov2_small=256, dinov2_small_efficientnet_lite0=256)
    for name, tokens in expected.items():  # 224/14 = 16 → 256; EfficientNet 224 → 112 → 56 → 28 → 14 → 7 → 49
        cfg = load_config(str(REPO / config), dict(native, vision_setting=name))
        assert cfg.train_dataloader.dataset.num_image_tokens == tokens, name
        procs = [cfg.train_dataloader.dataset.image_processor, cfg.custom_hooks[1].image_processor]
        assert all(p == cfg.vision_settings[name]['image_processor'] for p in procs), name
        check_settings_agree(cfg)  # sizes and counts agree with the towers (where data/real exists)


def test_every_tiny_law_setting_trains_one_step(tiny_assets, monkeypatch):
    """Each setting of the tiny twin: its dataset (its own processor) → collate → model → one loss + backward."""
    import torch
    from mmengine.registry import MODELS

    from mllm_align.data import llava_collate_fn
    from mllm_align.data.llava_dataset import build_from_cfg

    monkeypatch.chdir(REPO)  # the tiny paths are relative to the repository root
    for name in Config.fromfile(str(REPO / LAW_TWINS[0])).vision_settings:
        cfg = load_config(str(REPO / LAW_TWINS[0]), {'vision_setting': name})
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        dataset = build_from_cfg(cfg.train_dataloader.dataset)
        batch = llava_collate_fn([dataset[0], dataset[1]])['data']
        assert batch['pixel_values'].shape[0] == 2, name
        inputs = model.prepare_inputs(batch)
        assert inputs.image_mask.sum(1).tolist() == [cfg.num_image_tokens] * 2, name
        loss = model(batch, mode='loss')['loss_lm']
        loss.backward()
        assert torch.isfinite(loss), name
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
