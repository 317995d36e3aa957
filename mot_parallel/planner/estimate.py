"""Communication volume, step time, throughput and MFU of one layout (assumptions in hardware.py).

Bytes are per GPU and per optimizer step, as ring algorithms move them: all-reduce 2(n-1)/n x size,
all-gather / reduce-scatter (n-1)/n x size. A group's link is NVLink when all its ranks share a node,
else the inter-node fabric (its per-GPU bandwidth bounds the ring).
  TP (per layer and micro-batch, like a dense Megatron layer whatever the number of modalities):
     SP off: 2 all-reduces forward + 2 backward of [N, h]; SP on: 2 all-gathers + 2 reduce-scatters
     forward and the same backward plus 2 all-gathers (the column linears' inputs, saved as local
     slices); activation recompute repeats the forward ones.
  DP: ZeRO-0/1 one gradient all-reduce per step; ZeRO-2 a reduce-scatter per micro-batch + the
     parameter all-gather after the step; ZeRO-3 two parameter all-gathers (forward, backward) and a
     gradient reduce-scatter per micro-batch.
  PP: activations forward and their gradients backward across each stage boundary, per micro-batch.
Step time = (compute + TP comm) x (1 + bubble) + exposed DP comm + optimizer, where compute uses the
GEMM / attention efficiencies, the 1F1B bubble is (PP - 1) / micro-batches, (1 - dp_overlap) of DP
traffic is exposed (the post-step all-gather of ZeRO-1/2 fully), and the optimizer streams ~36 bytes
per parameter of its partition through HBM. A model with continuous modalities is assumed to spend half
its tokens on them (CONTINUOUS_SHARE, Transfusion's 1:1 text:image token mix); their patch encoders and
decoders (a linear projection or U-Net blocks, flops.continuous_flops_per_token) run on every TP rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from ..flops import forward_flops_per_token
from ..config.parallel_layout import ParallelLayout
from ..model.settings import ModelSettings
from .hardware import Hardware
from .params import rank_params, stage_layers


CONTINUOUS_SHARE = 0.5


@dataclass
class Estimate:
    comm_bytes: Dict[str, Dict[str, float]]   # collective -> {"bytes": per GPU per step, "link": ...}
    compute_s: float
    tp_comm_s: float
    bubble: float
    dp_exposed_s: float
    optimizer_s: float
    step_s: float
    tokens_per_s_per_gpu: float
    model_tflops_per_gpu: float
    mfu: float


def _spans_nodes(group_size: int, stride: int, hw: Hardware) -> bool:
    return group_size * stride > hw.gpus_per_node


def _tp_comm(s: ModelSettings, L: ParallelLayout, N: int, layers: int, hw: Hardware, act_bytes: int,
             comm: Dict[str, Dict[str, float]]) -> float:
    """TP collectives of one step (records them in `comm`); returns their time."""
    t, m = L.tp, L.grad_accum
    if t == 1:
        return 0.0
    link_bw = hw.inter_gbps * 1e9 if t > hw.gpus_per_node else hw.nvlink_gbps * 1e9
    link = "inter-node" if t > hw.gpus_per_node else "nvlink"
    size = N * s.hidden_size * act_bytes
    reps = 2 + (1 if L.activation_checkpointing else 0)      # forward, backward, recomputed forward
    # two collectives per pass (attention, FFN); an SP all-gather + reduce-scatter pair moves what an
    # all-reduce moves, 2 (t-1)/t x size; embedding and head add about two more per micro-batch
    per_layer = (reps * 2 * 2 + (2 if L.sequence_parallel else 0)) * (t - 1) / t * size
    total = per_layer * layers * m + 2 * 2 * (t - 1) / t * size * m
    comm["tp_all_gather+reduce_scatter" if L.sequence_parallel else "tp_all_reduce"] = {"bytes": total, "link": link}
    return total / link_bw


def _dp_comm(L: ParallelLayout, P: int, hw: Hardware, act_bytes: int, comm: Dict[str, Dict[str, float]]) -> float:
    """DP (ZeRO) traffic of one step (records it in `comm`); returns its exposed time."""
    d, m = L.dp, L.grad_accum
    if d == 1:
        return 0.0
    spans = _spans_nodes(d, L.tp, hw)
    bw, link = (hw.inter_gbps * 1e9, "inter-node") if spans else (hw.nvlink_gbps * 1e9, "nvlink")
    grad = P * act_bytes
    frac = (d - 1) / d
    if L.zero_stage <= 1:
        comm["dp_grad_all_reduce"] = {"bytes": 2 * frac * grad, "link": link}
        return (1 - hw.dp_overlap) * 2 * frac * grad / bw
    if L.zero_stage == 2:
        comm["dp_grad_reduce_scatter"] = {"bytes": m * frac * grad, "link": link}
        comm["dp_param_all_gather"] = {"bytes": frac * grad, "link": link}
        return (1 - hw.dp_overlap) * m * frac * grad / bw + frac * grad / bw
    comm["zero3_param_all_gather"] = {"bytes": 2 * m * frac * grad, "link": link}
    comm["zero3_grad_reduce_scatter"] = {"bytes": m * frac * grad, "link": link}
    return (1 - hw.dp_overlap) * 3 * m * frac * grad / bw


def estimate(s: ModelSettings, L: ParallelLayout, seq: int, hw: Hardware, act_bytes: int = 2) -> Estimate:
    N = seq * L.micro_batch_size                  # tokens per micro-batch
    m = L.grad_accum                              # micro-batches per step
    tokens_step = N * m * L.dp
    layers = max(len(stage_layers(s.num_layers, L.pp, st)) for st in range(L.pp))
    P = max(rank_params(s, L.tp, L.pp, st).total for st in range(L.pp))
    comm: Dict[str, Dict[str, float]] = {}
    tp_time = _tp_comm(s, L, N, layers, hw, act_bytes, comm)
    dp_time = _dp_comm(L, P, hw, act_bytes, comm)
    if L.pp > 1:
        spans = L.dp * L.tp >= hw.gpus_per_node
        act = N * s.hidden_size * act_bytes / (L.tp if L.sequence_parallel else 1)
        comm["pp_p2p"] = {"bytes": 2 * act * m, "link": "inter-node" if spans else "nvlink"}
        tp_time += 2 * act * m / ((hw.inter_gbps if spans else hw.nvlink_gbps) * 1e9)
    # compute (dense-equivalent FLOPs: MoT has the dense model's FLOPs per token)
    f = forward_flops_per_token(s, seq)
    mult = 4.0 if L.activation_checkpointing else 3.0
    peak = hw.peak_tflops * 1e12
    gemm = (f["layer_gemm"] * s.num_layers + f["head"]) * mult * tokens_step / L.world_size
    # continuous modalities' in/out paths run replicated on every TP rank (model/continuous.py)
    gemm += f["continuous_token_extra"] * CONTINUOUS_SHARE * mult * tokens_step * L.tp / L.world_size
    attn = f["layer_attention"] * s.num_layers * mult * tokens_step / L.world_size
    compute = gemm / (peak * hw.gemm_efficiency) + attn / (peak * hw.attention_efficiency)
    bubble = (L.pp - 1) / m if L.pp > 1 else 0.0
    optimizer = 36 * P / (L.dp if L.zero_stage >= 1 else 1) / (hw.hbm_gbps * 1e9)
    step = (compute + tp_time) * (1 + bubble) + dp_time + optimizer
    tflops = f["total"] * 3.0 * tokens_step / step / L.world_size / 1e12
    return Estimate(comm, compute, tp_time, bubble, dp_time, optimizer, step, tokens_step / step / L.world_size, tflops,
                    tflops / hw.peak_tflops)
