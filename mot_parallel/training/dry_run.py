"""Build the model exactly as rank R of a layout would, on the meta device (no memory, no process
group), check every parameter's shape and sharding against the shapes the settings imply, and report
parameters and the planner's memory estimate. A 256-GPU 7B layout is validated on a laptop in seconds.

    python launch/pretrain.py --config configs/mot_7b_chameleon.yaml --dry-run --world-size 256 --rank 17
"""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

import torch

from ..config import Config, validate
from ..distributed.collectives import VirtualGroup
from ..distributed.parallel_context import ParallelContext
from ..model import ModelSettings, MoTModel
from ..model.unet import unet_param_shapes
from ..planner import GPUS, evaluate, rank_params, stage_layers
from ..tensor_parallel.param_meta import modality_of, tp_partition


def expected_full_shapes(s: ModelSettings, tp: int) -> List[Tuple[str, Tuple[int, ...], int]]:
    """(name regex, full shape, partition dim or -1) for every parameter kind, from the settings and TP size."""
    h, d, f, V = s.hidden_size, s.head_dim, s.ffn_hidden_size, s.padded_vocab(tp)
    mod = r"(\.(" + "|".join(map(re.escape, s.modalities)) + r"))?$"
    qkv_bias = (s.num_heads + 2 * s.num_kv_heads) * d
    bias = [(r"^layers\.\d+\.self_attention\.linear_qkv\.bias" + mod, (qkv_bias,), 0)] if s.qkv_bias else []
    for c in s.continuous:  # replicated over TP (model/continuous.py)
        n = re.escape(c.name)
        time_parts = ["embedding", "head"] if c.unet else ["embedding"]
        for part in time_parts:
            bias += [(rf"^{part}\.continuous\.time_in\.{n}\.weight$", (h, 256), -1),
                     (rf"^{part}\.continuous\.time_out\.{n}\.weight$", (h, h), -1),
                     (rf"^{part}\.continuous\.(time_in|time_out)\.{n}\.bias$", (h,), -1)]
        if c.unet:
            for part, up in (("embedding", False), ("head", True)):
                shapes = unet_param_shapes(f"{part}.continuous.unet.{c.name}", c.channels, c.patch, c.unet_channels,
                                           h, up)
                bias += [("^" + re.escape(name) + "$", shape, -1) for name, shape in shapes.items()]
            continue
        bias += [(rf"^embedding\.continuous\.proj\.{n}\.weight$", (h, c.patch_dim), -1),
                 (rf"^embedding\.continuous\.proj\.{n}\.bias$", (h,), -1),
                 (rf"^head\.continuous\.proj\.{n}\.weight$", (c.patch_dim, h), -1),
                 (rf"^head\.continuous\.proj\.{n}\.bias$", (c.patch_dim,), -1)]
    return bias + [
        (r"^embedding\.word_embeddings\.weight$", (V, h), 0),
        (r"^layers\.\d+\.(attn|ffn)_norm\.weight" + mod, (h,), -1),
        (r"^layers\.\d+\.self_attention\.linear_qkv\.weight" + mod, ((s.num_heads + 2 * s.num_kv_heads) * d, h), 0),
        (r"^layers\.\d+\.self_attention\.linear_proj\.weight" + mod, (h, s.num_heads * d), 1),
        (r"^layers\.\d+\.self_attention\.[qk]_layernorm\.weight" + mod, (d,), -1),
        (r"^layers\.\d+\.mlp\.linear_fc1\.weight" + mod, (2 * f, h), 0),
        (r"^layers\.\d+\.mlp\.linear_fc2\.weight" + mod, (h, f), 1),
        (r"^head\.final_norm\.weight" + mod, (h,), -1),
        (r"^head\.output_layer\.weight$", (V, h), 0),
    ]


def check_rank(cfg: Config, world_size: int, rank: int) -> Dict:
    layout = validate(cfg, world_size)
    coord = layout.coords(rank)
    s = ModelSettings.from_config(cfg, params_dtype=torch.bfloat16)
    layers = stage_layers(s.num_layers, layout.pp, coord.pp)
    parallel = ParallelContext.of(VirtualGroup(layout.tp, coord.tp), layout.sequence_parallel, pp_rank=coord.pp,
                                  pp_size=layout.pp)
    model = MoTModel(s, parallel=parallel, layer_numbers=layers,
                     pre_process=coord.pp == 0, post_process=coord.pp == layout.pp - 1, device="meta")
    rules = expected_full_shapes(s, layout.tp)
    problems, count = [], 0
    for name, p in model.named_parameters():
        count += p.numel()
        match = [(full, dim) for rx, full, dim in rules if re.search(rx, name)]
        if not match:
            problems.append(f"{name}: unexpected parameter")
            continue
        full, dim = match[0]
        local = list(full)
        if dim >= 0:
            local[dim] //= layout.tp
        tagged = tp_partition(p)[0]
        if tuple(p.shape) != tuple(local):
            problems.append(f"{name}: shape {tuple(p.shape)}, expected {tuple(local)} (full {full} / TP {layout.tp})")
        if layout.tp > 1 and tagged != dim:
            problems.append(f"{name}: partition_dim tag {tagged}, expected {dim}")
        if name.rsplit(".", 1)[-1] in s.modalities and modality_of(p) != name.rsplit(".", 1)[-1]:
            problems.append(f"{name}: its metadata does not name modality {name.rsplit('.', 1)[-1]!r}")
    numbers = [layer.layer_number for layer in model.layers]  # global numbers (module names are local)
    if numbers != list(layers):
        problems.append(f"layers {numbers} built, stage {coord.pp} should hold {list(layers)}")
    planned = rank_params(s, layout.tp, layout.pp, coord.pp).total
    if planned != count:
        problems.append(f"the planner counts {planned} parameters on this rank, the model has {count}")
    plan = evaluate(s, layout, cfg.model.max_seq_len, GPUS["a100-80gb"])
    return {"rank": rank, "coord": tuple(coord), "layout": layout, "layers": (layers.start, layers.stop),
            "params": count, "planned_params": planned, "problems": problems,
            "memory_gb": plan.memory.as_gb(), "fits_a100_80gb": plan.fits}


def dry_run(cfg: Config, world_size: int, rank: int, all_ranks: bool = False) -> int:
    """Print the report; returns the number of problems found (0 = the layout is consistent)."""
    layout = validate(cfg, world_size)
    ranks = [rank]
    if all_ranks:  # one rank per (pipeline stage, TP rank): the others are DP copies
        ranks = [layout.rank_of(p, 0, t) for p in range(layout.pp) for t in range(layout.tp)]
    total_problems = 0
    for r in ranks:
        rep = check_rank(cfg, world_size, r)
        L = rep["layout"]
        mem = rep["memory_gb"]
        print(f"[dry-run] rank {r}/{world_size} (pp {rep['coord'][0]}, dp {rep['coord'][1]}, tp {rep['coord'][2]}) "
              f"of TP={L.tp} PP={L.pp} DP={L.dp}: layers {rep['layers'][0]}-{rep['layers'][1] - 1}, "
              f"{rep['params']:,} parameters (planner: {rep['planned_params']:,})")
        print(f"[dry-run]   planner memory (A100-80GB assumptions): {mem['total']:.1f} GB "
              f"({'fits' if rep['fits_a100_80gb'] else 'DOES NOT FIT'}; worst stage {mem['stage']}): "
              + ", ".join(f"{k} {v:.2f}" for k, v in mem.items() if k not in ("total", "stage")))
        for p in rep["problems"]:
            print(f"[dry-run]   PROBLEM: {p}")
        total_problems += len(rep["problems"])
    print(f"[dry-run] {'OK' if total_problems == 0 else f'{total_problems} problems'}: "
          f"{len(ranks)} rank(s) checked, {world_size} ranks in the layout")
    return total_problems
