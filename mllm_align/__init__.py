"""mllm_align: cross-modal alignment toolkit for multimodal LLMs.

Sub-packages: ``models`` (LLaVA-style model, towers, projectors), ``align`` (one file per
alignment method), ``data`` (templates, datasets, collate, samplers), ``metrics`` (pure metric
functions), ``engine`` (hooks, checkpoint and runner helpers), ``testing`` (tiny offline assets).
"""
__version__ = '0.1.0'
