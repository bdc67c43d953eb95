"""Data pipeline of the LLaVA-style trainer: chat templates, the lazy LLaVA JSON dataset,
image preprocessing, collate and the length-grouped sampler."""
from ..loader_workers import available_cpus, default_num_workers
from .bad_samples import BadSampleError, MissingImageError, SkipsBadSamples
from .collate import colva_collate_fn, llava_collate_fn
from .image_loading import ImageTooLargeError, UnreadableImageError, load_image, read_image_size, to_rgb
from .image_processing import background_color, expand2square, process_images
from .json_index import JsonRecords, MalformedRecordError, index_json_array, index_jsonl
from .llava_dataset import (
    BAD_SAMPLE_CAUSES,
    ConcatDataset,
    LLaVADataset,
    build_from_cfg,
)
from .mmvm_sft import MMVMSFTDataset, load_mmvm_sft
from .sa1b import SA1BPseudoVideoDataset
from .samplers import LengthGroupedSampler, length_grouped_indices
from .templates import (
    TEMPLATES,
    ChatTemplate,
    ConversationError,
    build_generation_prompt,
    encode_conversation,
    get_template,
    normalize_conversation,
    register_template,
    render_conversation,
)

__all__ = [
    'llava_collate_fn', 'colva_collate_fn', 'MMVMSFTDataset', 'load_mmvm_sft', 'SA1BPseudoVideoDataset',
    'ImageTooLargeError', 'UnreadableImageError', 'load_image', 'read_image_size',
    'to_rgb', 'background_color', 'expand2square', 'process_images', 'JsonRecords',
    'MalformedRecordError', 'index_json_array', 'index_jsonl', 'BAD_SAMPLE_CAUSES',
    'BadSampleError', 'SkipsBadSamples', 'ConcatDataset', 'LLaVADataset', 'MissingImageError', 'build_from_cfg',
    'LengthGroupedSampler', 'length_grouped_indices', 'available_cpus', 'default_num_workers',
    'TEMPLATES', 'ChatTemplate',
    'ConversationError', 'build_generation_prompt', 'encode_conversation', 'get_template',
    'normalize_conversation', 'register_template', 'render_conversation'
]
