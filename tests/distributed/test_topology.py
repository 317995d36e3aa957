"""Rank layout equals DeepSpeed's PipeModelDataParallelTopology (every layout of <= 8 ranks, no processes),
and the real groups built on every layout of <= 4 processes reduce over exactly the expected ranks."""
import pytest
import torch
import torch.distributed as dist
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

from mot_parallel.config import ParallelLayout
from mot_parallel.distributed import ParallelTopology
from mot_parallel.testing import layout_id, layouts, run_distributed

ALL_8 = [ParallelLayout(t, p, d) for t in (1, 2, 4, 8) for p in (1, 2, 4, 8) for d in (1, 2, 4, 8) if t * p * d <= 8]


@pytest.mark.parametrize("dims", ALL_8, ids=layout_id)
def test_rank_order_matches_deepspeed(dims):
    ds = PipeModelDataParallelTopology(num_pp=dims.pp, num_mp=dims.tp, num_dp=dims.dp)
    for rank in range(dims.world_size):
        c = ds.get_coord(rank)
        assert dims.coords(rank) == (c.pipe, c.data, c.model)
        assert dims.rank_of(c.pipe, c.data, c.model) == rank
    assert sorted(dims.tp_groups()) == sorted(ds.get_axis_comm_lists("model") or [[r] for r in range(dims.world_size)])
    assert sorted(dims.dp_groups()) == sorted(ds.get_axis_comm_lists("data") or [[r] for r in range(dims.world_size)])
    assert sorted(dims.pp_groups()) == sorted(ds.get_axis_comm_lists("pipe") or [[r] for r in range(dims.world_size)])
    # DeepSpeed's grid: model parallel = every axis except data
    mp_ds = {tuple(sorted(ds.filter_match(data=d))) for d in range(dims.dp)}
    assert {tuple(g) for g in dims.mp_groups()} == mp_ds


def _check_groups(dims):
    topo = ParallelTopology.build(dims)
    mpu = topo.mpu()
    rank = dist.get_rank()
    out = {}
    for name, group, ranks in (("tp", topo.tp_group, topo.tp_ranks), ("dp", topo.dp_group, topo.dp_ranks),
                               ("pp", topo.pp_group, topo.pp_ranks), ("mp", topo.mp_group, topo.mp_ranks)):
        x = torch.tensor([float(2 ** rank)])
        dist.all_reduce(x, group=group)
        out[name] = (int(x.item()), sum(2 ** r for r in ranks), dist.get_world_size(group), len(ranks))
    out["mpu"] = (mpu.get_tensor_model_parallel_rank(), mpu.get_data_parallel_rank(),
                  mpu.get_pipeline_model_parallel_rank(), mpu.get_model_parallel_world_size(),
                  mpu.get_data_parallel_world_size(), mpu.get_data_parallel_group_ranks())
    out["coord"] = tuple(topo.coord)
    out["no_ulysses"] = not any(hasattr(mpu, n) for n in ("get_sequence_parallel_world_size",
                                                            "get_sequence_parallel_group",
                                                            "initialize_sequence_parallel"))
    return out


@pytest.mark.parametrize("dims", layouts(max_world=4), ids=layout_id)
def test_groups_on_processes(dims):
    for rank, res in enumerate(run_distributed(_check_groups, dims.world_size, args=(dims,), timeout=90)):
        for name in ("tp", "dp", "pp", "mp"):
            got, expected, size, n = res[name]
            assert got == expected and size == n, (name, rank, res[name])
        coord = dims.coords(rank)
        assert res["coord"] == tuple(coord)
        assert res["mpu"][:3] == (coord.tp, coord.dp, coord.pp)
        assert res["mpu"][3] == dims.tp * dims.pp and res["mpu"][4] == dims.dp
        assert res["mpu"][5] == [dims.rank_of(coord.pp, d, coord.tp) for d in range(dims.dp)]
        assert res["no_ulysses"]


def test_single_process_needs_no_process_group():
    topo = ParallelTopology.build(ParallelLayout())
    assert topo.tp_group is None and topo.is_first_stage and topo.is_last_stage
    with pytest.raises(RuntimeError, match="needs 2 processes"):
        ParallelTopology.build(ParallelLayout(tp=2))


def _from_megatron(dims):
    from megatron.core import parallel_state as ps
    ps.initialize_model_parallel(tensor_model_parallel_size=dims.tp, pipeline_model_parallel_size=dims.pp)
    topo = ParallelTopology.from_megatron(ps)
    x = torch.tensor([float(2 ** dist.get_rank())])
    dist.all_reduce(x, group=topo.tp_group)
    y = torch.tensor([float(2 ** dist.get_rank())])
    dist.all_reduce(y, group=topo.dp_group)
    return topo.layout, tuple(topo.coord), int(x.item()) == sum(2 ** r for r in topo.tp_ranks), \
        int(y.item()) == sum(2 ** r for r in topo.dp_ranks)


@pytest.mark.parametrize("dims", [ParallelLayout(2, 2, 1), ParallelLayout(2, 1, 2), ParallelLayout(1, 2, 2)],
                         ids=layout_id)
def test_topology_from_megatron_parallel_state(dims):
    pytest.importorskip("megatron.core")
    for rank, (got, coord, tp_ok, dp_ok) in enumerate(run_distributed(_from_megatron, 4, args=(dims,))):
        assert got == dims and coord == tuple(dims.coords(rank)) and tp_ok and dp_ok
