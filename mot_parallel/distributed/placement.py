"""Where the ranks run: which node holds which ranks, and whether every TP group stays inside one node.

    [mot_parallel] placement: node1: ranks 0-1 | node2: ranks 2-3 (2 nodes, 4 ranks)
    [mot_parallel] placement: every TP group lies inside one node (TP2: [0-1] [2-3]); DP groups cross nodes

Launchers print it once at start-up (launch/pretrain.py), so a job's log records where each rank ran.
A TP group spread over nodes is correct but slow (its all-reduces, one or more per layer, cross the
inter-node network): it is a warning naming the groups and the fix. Hosts are told apart by hostname.
"""
from __future__ import annotations

import socket
from typing import Dict, List, Sequence

import torch.distributed as dist

from ..config.parallel_layout import ParallelLayout


def _ranges(ranks: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, ranks = [], sorted(ranks)
    start = prev = ranks[0]
    for r in ranks[1:] + [None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
        if r is not None:
            start = prev = r
    return ",".join(out)


def placement_lines(hosts: Sequence[str], layout: ParallelLayout) -> List[str]:
    """The placement report of a world whose rank r runs on hosts[r]."""
    nodes: Dict[str, List[int]] = {}
    for rank, host in enumerate(hosts):
        nodes.setdefault(host, []).append(rank)
    lines = [" | ".join(f"{h}: ranks {_ranges(r)}" for h, r in nodes.items())
             + f" ({len(nodes)} node{'s' * (len(nodes) > 1)}, {len(hosts)} rank{'s' * (len(hosts) > 1)})"]
    split = [g for g in layout.tp_groups() if len({hosts[r] for r in g}) > 1]
    crossing = [name for name, groups in (("DP", layout.dp_groups()), ("PP", layout.pp_groups()))
                if any(len({hosts[r] for r in g}) > 1 for g in groups)]
    across = f"; {' and '.join(crossing)} groups cross nodes" if crossing else ""
    if not split:
        groups = " ".join(f"[{_ranges(g)}]" for g in layout.tp_groups()[:8])
        more = " ..." if len(layout.tp_groups()) > 8 else ""
        return lines + [f"every TP group lies inside one node (TP{layout.tp}: {groups}{more}){across}"]
    return lines + [f"WARNING: {len(split)} TP group(s) span nodes, e.g. ranks [{_ranges(split[0])}] on "
                    f"{sorted({hosts[r] for r in split[0]})}: their per-layer all-reduces cross the network. "
                    f"Start a multiple of parallel.tensor_parallel={layout.tp} processes per node, consecutive ranks "
                    f"together (srun's default --distribution=block){across}"]


def log_placement(topo) -> List[str]:
    """Gather every rank's hostname (collective) and print the report on rank 0; returns its lines."""
    hosts = [socket.gethostname()]
    if dist.is_available() and dist.is_initialized():
        hosts = [None] * dist.get_world_size()
        dist.all_gather_object(hosts, socket.gethostname())
    lines = placement_lines(hosts, topo.layout)
    if topo.rank == 0:
        for line in lines:
            print(f"[mot_parallel] placement: {line}", flush=True)
    return lines
