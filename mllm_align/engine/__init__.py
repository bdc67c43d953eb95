"""Engine: checkpoint safety, runner helpers and hooks. Importing it installs atomic checkpoint writes
and safe (``weights_only``) checkpoint loading for mmengine."""
from .checkpoint import (
    AtomicLocalBackend,
    UnsafeCheckpointError,
    allow_mmengine_checkpoint_globals,
    install_atomic_backend,
    install_safe_local_loader,
    load_checkpoint_file,
    load_trained_weights,
)

install_atomic_backend()
allow_mmengine_checkpoint_globals()
install_safe_local_loader()

__all__ = ['AtomicLocalBackend', 'UnsafeCheckpointError', 'allow_mmengine_checkpoint_globals',
           'install_atomic_backend', 'install_safe_local_loader', 'load_checkpoint_file', 'load_trained_weights']
