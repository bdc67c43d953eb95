"""ReleaseDataWorkersHook: the persistent DataLoader workers are stopped when training ends."""
from types import SimpleNamespace

import torch

from mllm_align.engine.hooks import ReleaseDataWorkersHook


def test_stops_persistent_workers_and_leaves_other_loaders_alone():
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=2, num_workers=2, persistent_workers=True)
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    workers = list(loader._iterator._workers)
    assert all(w.is_alive() for w in workers)
    hook = ReleaseDataWorkersHook()
    hook.after_train(SimpleNamespace(train_loop=SimpleNamespace(dataloader=loader)))
    assert loader._iterator is None and not any(w.is_alive() for w in workers)
    assert [b.tolist() for b in loader][0] == [0, 1]  # a later epoch starts a new pool
    hook.after_train(SimpleNamespace(train_loop=SimpleNamespace(dataloader=loader)))
    plain = torch.utils.data.DataLoader(list(range(4)), batch_size=2)
    list(plain)
    hook.after_train(SimpleNamespace(train_loop=SimpleNamespace(dataloader=plain)))  # no pool: nothing to do
    hook.after_train(SimpleNamespace())  # no loop
