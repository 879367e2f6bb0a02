"""bench/peer_losses.py: lightly's model with its heads loaded from ours computes our loss — the same value on the same
batch from the same weights — so that a difference between the two sides of bench/peer_table.py is the heads' initial
draws, not the implementation (docs/evidence.md, VICReg)."""

import sys

import pytest
import torch

from selfsup.config import ROOT

pytest.importorskip("lightly")
sys.path.insert(0, str(ROOT / "bench"))
import peer_losses  # noqa: E402

TINY = ["data.subset=64", "data.batch_size=32", "data.num_workers=0"]


@pytest.mark.parametrize("method", peer_losses.METHODS)
def test_lightly_from_our_heads_takes_our_steps(method, tmp_path, cifar10_root):
    """Three optimiser steps of ours and of lightly's model with our heads: the same losses (float32 round-off)."""
    ours, warmup = peer_losses.losses(method, 0, 3, "ours", tmp_path, TINY)
    theirs, _ = peer_losses.losses(method, 0, 3, "lightly, our heads", tmp_path, TINY)
    assert len(ours) == 3 and warmup >= 1
    torch.testing.assert_close(torch.tensor(theirs), torch.tensor(ours), rtol=1e-4, atol=1e-5, msg=method)


def test_heads_of_other_layers_are_refused_in_one_line():
    with pytest.raises(SystemExit, match="projector: our head's tensors"):
        peer_losses.copy_head(torch.nn.Linear(4, 3), torch.nn.Linear(4, 2), "projector")
