"""ParallelContext (mot_parallel/distributed/parallel_context.py): what a module knows about the split, decided
once. Sequence parallelism is on exactly when it is asked for inside a TP group of more than one rank, and no
module outside config/parallel_layout.py combines the request with the TP size itself."""
import pathlib
import re

import pytest

from mot_parallel.config.parallel_layout import ParallelLayout, effective_sequence_parallel
from mot_parallel.distributed.collectives import VirtualGroup
from mot_parallel.distributed.parallel_context import ParallelContext

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "mot_parallel"


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("requested", [False, True])
def test_sequence_parallel_is_on_only_inside_a_tp_group(tp, requested):
    for rank in range(tp):
        ctx = ParallelContext.of(VirtualGroup(tp, rank) if tp > 1 else None, requested)
        assert (ctx.tp_size, ctx.tp_rank) == (tp, rank)
        assert ctx.sequence_parallel == (requested and tp > 1) == effective_sequence_parallel(requested, tp)
    assert ParallelLayout(tp=tp, sequence_parallel=requested).sequence_parallel == (requested and tp > 1)


def test_one_process_is_the_unsharded_model():
    ctx = ParallelContext()
    assert (ctx.tp_group, ctx.tp_size, ctx.tp_rank, ctx.sequence_parallel) == (None, 1, 0, False)
    with pytest.raises(Exception):  # frozen: nothing changes the split after it is built
        ctx.sequence_parallel = True


def test_the_split_is_decided_in_one_place():
    """Before ParallelContext, eight modules decided "SP and TP > 1" from two sources; now only
    effective_sequence_parallel does, and no other code line combines sequence parallelism with a TP size."""
    rule = re.compile(r"(sequence_parallel|\bsp\b)[^\n]*(\btp|tp_size|tensor_parallel|group_size\([^)]*\))\s*>\s*1|"
                      r"(\btp|tp_size|tensor_parallel)\s*>\s*1[^\n]*(sequence_parallel|\bsp\b)")
    found = sorted(f"{p.relative_to(PACKAGE)}:{n}" for p in PACKAGE.rglob("*.py")
                   for n, line in enumerate(p.read_text().splitlines(), 1) if rule.search(line.split("#")[0]))
    assert not found, found
    source = (PACKAGE / "config" / "parallel_layout.py").read_text()
    assert "def effective_sequence_parallel(requested: bool, tp_size: int) -> bool:" in source
    assert "return bool(requested) and tp_size > 1" in source
