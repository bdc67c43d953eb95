"""Models: the model interface (``base.py``), its bases (LLaVA-style, …), vision towers, projectors, HF loaders."""
from .base import MultimodalModel, VisionEncoder, find_decoder_layers
from .builders import load_image_processor, load_llm, load_tokenizer
from .cnn_tower import CNNFeatureMapTower
from .colva import CoLVAModel, load_colva_export
from .hf_llava import HFLlavaModel, load_hf_dir, register_hf_dir_loader
from .llava import LLaVAModel, causal_lm_loss, supervised_positions
from .multi_tower import MultiTowerEncoder, MultiTowerImageProcessor
from .plugin import AlignPlugin
from .projector import build_projector
from .qwen2_vl import Qwen2VLModel, load_qwen2_vl_dir, load_qwen2_vl_image_processor
from .splice import MultimodalInputs, splice_image_features
from .vision_expert import HFVisionExpert, VisionExpert
from .vision_tower import VisionTower

__all__ = ['MultimodalModel', 'VisionEncoder', 'AlignPlugin', 'MultimodalInputs', 'find_decoder_layers',
           'causal_lm_loss', 'supervised_positions', 'splice_image_features',
           'LLaVAModel', 'VisionTower', 'CNNFeatureMapTower', 'MultiTowerEncoder', 'MultiTowerImageProcessor',
           'build_projector', 'load_image_processor', 'load_llm', 'load_tokenizer',
           'Qwen2VLModel', 'load_qwen2_vl_dir', 'load_qwen2_vl_image_processor',
           'HFLlavaModel', 'load_hf_dir', 'register_hf_dir_loader', 'CoLVAModel', 'load_colva_export',
           'HFVisionExpert', 'VisionExpert']
