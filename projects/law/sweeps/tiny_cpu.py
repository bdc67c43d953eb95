"""The law sweep's tiny CPU twin: four tiny vision settings, 12 stage-1 iterations each, A on 16 pairs, C on
the synthetic SPair pairs (``python tools/build_tiny_assets.py --root data/tiny`` writes data/tiny/ and
data/tiny/spair). A few minutes on 2 cores:

    python tools/law_sweep.py projects/law/sweeps/tiny_cpu.py
    python tools/ac_law.py work_dirs/law_sweep_tiny/law_table.csv   # once benchmark columns are added

Format of a sweep config: mllm_align/engine/law_sweep.py. The real-weights variant: easyvqa_real.py.
"""
stage1_config = 'projects/law/configs/pretrain/llava_v15_7b_law_pretrain_tiny_cpu.py'
settings = ['tiny_clip', 'tiny_siglip', 'tiny_dinov2', 'tiny_clip_dinov2']  # the tiny twin's catalogue
nproc = 1  # one process per run: the four runs go one after another
work_root = 'work_dirs/law_sweep_tiny'
a_score = dict(num_pairs=16, seed=0)  # caption pairs of the tiny shapes data
c_score = dict(spair_root='data/tiny/spair', split='test', convention='geoaware', match='argmax', average='image')
table_names = dict(tiny_clip='CLIP', tiny_siglip='SigLIP', tiny_dinov2='DINOv2', tiny_clip_dinov2='C+D')
