"""BAPO on two data-parallel ranks (torchrun, gloo, CPU): with the contributions all-reduced, as the trainer passes
``reduce`` to ``policy_loss``, every rank chooses the bounds of the whole batch, and the ranks' loss shares add up
to the one-process loss.

This file is also the worker torchrun starts: ``python -m torch.distributed.run --nproc_per_node 2
tests/test_algorithms_bapo_ranks.py OUT``.
"""

import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script by torchrun
    sys.path.insert(0, str(REPO))

from algorithms import ALGORITHMS, Normalizers, policy_loss  # noqa: E402
from training.distributed import all_reduce_sum, init_distributed, shutdown  # noqa: E402

# rows (ratio, A): rank 0 holds row 0 (positive only), rank 1 rows 1 and 2 (negative only)
RATIO_BT = torch.tensor([[1.6, 1.0], [0.5, 0.9], [1.0, 1.0]])
ADV_BT = torch.tensor([[1.0, 1.0], [-2.0, -2.0], [-1.0, -1.0]])
MASK_BT = torch.tensor([[True, False], [True, False], [True, False]])  # one trained token per row
NORM = Normalizers.count(MASK_BT, 2)


def loss_of(rows: list[int], reduce=None) -> tuple[float, float, float]:
    out = policy_loss(
        ALGORITHMS["bapo"], RATIO_BT[rows].log(), torch.zeros(len(rows), 2), ADV_BT[rows], MASK_BT[rows], NORM,
        reduce=reduce,
    )  # fmt: skip
    token_share = MASK_BT[rows].sum().item() / NORM.num_tokens
    return (
        out.loss.item(),
        out.metrics["bapo_clip_low"].item() / token_share,
        out.metrics["bapo_clip_high"].item() / token_share,
    )


@pytest.mark.slow
def test_two_ranks_choose_the_bounds_of_the_whole_batch(tmp_path: Path):
    from tests.test_training_distributed import torchrun

    whole_loss, whole_low, whole_high = loss_of([0, 1, 2])
    # by hand (tests/test_algorithms_baselines.py): the whole batch reaches the target at (0.95, 1.5)
    assert (whole_low, whole_high) == (pytest.approx(0.95), pytest.approx(1.5))
    alone = loss_of([0])  # rank 0 alone sees no negative contribution and keeps the start
    assert alone[1:] == (pytest.approx(0.8), pytest.approx(1.2))
    out = torchrun([__file__, str(tmp_path / "ranks.pt")], tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = torch.load(tmp_path / "ranks.pt")
    for rank in (0, 1):
        assert got[rank][1:] == (pytest.approx(whole_low), pytest.approx(whole_high))
    assert got[0][0] + got[1][0] == pytest.approx(whole_loss, abs=1e-6)


if __name__ == "__main__":
    info = init_distributed()
    torch.set_num_threads(1)
    mine = [[0], [1, 2]][info.rank]
    result = loss_of(mine, reduce=lambda sums: all_reduce_sum(sums, info))
    gathered = [None, None]
    torch.distributed.all_gather_object(gathered, result)
    if info.rank == 0:
        torch.save(gathered, sys.argv[1])
    shutdown(info)
    assert math.isfinite(result[0])
