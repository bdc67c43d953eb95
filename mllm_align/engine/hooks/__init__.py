"""Hooks: observers registered in mmengine's HOOKS registry, one per file."""
from .data_workers_hook import ReleaseDataWorkersHook
from .dataset_info_hook import DatasetInfoHook
from .evaluate_chat_hook import EvaluateChatHook
from .mir_hook import MIRHook

__all__ = ['DatasetInfoHook', 'EvaluateChatHook', 'MIRHook', 'ReleaseDataWorkersHook']
