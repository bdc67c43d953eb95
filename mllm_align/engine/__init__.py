"""Engine: checkpoint safety, runner helpers and hooks. Importing it installs atomic checkpoint writes."""
from .checkpoint import (AtomicLocalBackend, allow_mmengine_checkpoint_globals, install_atomic_backend,
                         load_checkpoint_file, load_trained_weights)

install_atomic_backend()
allow_mmengine_checkpoint_globals()

__all__ = ['AtomicLocalBackend', 'allow_mmengine_checkpoint_globals', 'install_atomic_backend',
           'load_checkpoint_file', 'load_trained_weights']
