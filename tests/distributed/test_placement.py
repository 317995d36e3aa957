"""The placement report of a launch (distributed/placement.py): which node holds which ranks, and whether
each TP group lies inside one node; a TP group split over nodes is a warning naming a group, its nodes and
the fix. Pure functions of the rank -> host list and the layout (the two-node Slurm test reads the real
report from a job's log)."""
import pytest

from mot_parallel.config.parallel_layout import ParallelLayout
from mot_parallel.distributed.placement import _ranges, placement_lines


@pytest.mark.parametrize("ranks,text", [([0], "0"), ([0, 1, 2], "0-2"), ([3, 0, 1, 7, 8, 5], "0-1,3,5,7-8")])
def test_rank_ranges(ranks, text):
    assert _ranges(ranks) == text


def test_blocks_of_ranks_keep_tp_inside_a_node():
    hosts = ["gpu01"] * 8 + ["gpu02"] * 8
    lines = placement_lines(hosts, ParallelLayout(tp=4, pp=2, dp=2))
    assert lines[0] == "gpu01: ranks 0-7 | gpu02: ranks 8-15 (2 nodes, 16 ranks)"
    assert lines[1].startswith("every TP group lies inside one node (TP4: [0-3] [4-7] [8-11] [12-15])")
    assert lines[1].endswith("PP groups cross nodes")


def test_cyclic_placement_splits_tp_groups_and_says_how_to_fix_it():
    hosts = ["a", "b"] * 4  # srun --distribution=cyclic
    (_, warning) = placement_lines(hosts, ParallelLayout(tp=2, dp=4))
    assert warning.startswith("WARNING: 4 TP group(s) span nodes, e.g. ranks [0-1] on ['a', 'b']")
    assert "multiple of parallel.tensor_parallel=2 processes per node" in warning


def test_one_node_and_many_groups():
    lines = placement_lines(["h"] * 32, ParallelLayout(tp=2, dp=16))
    assert lines == ["h: ranks 0-31 (1 node, 32 ranks)",
                     "every TP group lies inside one node (TP2: [0-1] [2-3] [4-5] [6-7] [8-9] [10-11] [12-13] "
                     "[14-15] ...)"]
