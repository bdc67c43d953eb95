"""Models: the LLaVA-style MLLM, vision towers, projectors and HF loaders."""
from .builders import load_image_processor, load_llm, load_tokenizer
from .llava import LLaVAModel, causal_lm_loss, supervised_positions
from .projector import build_projector
from .splice import MultimodalInputs, splice_image_features
from .vision_tower import VisionTower

__all__ = ['LLaVAModel', 'VisionTower', 'MultimodalInputs', 'build_projector', 'causal_lm_loss',
           'load_image_processor', 'load_llm', 'load_tokenizer', 'splice_image_features',
           'supervised_positions']
