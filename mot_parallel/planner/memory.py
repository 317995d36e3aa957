"""Per-GPU memory of one layout, component by component, for the stage that needs the most.

peak = persistent + max(backward start, backward end) + reserve, with (P = this rank's parameters,
d = DP size, b = bytes per element of the model dtype, 2 for bf16 and 4 for fp32):
  weights      P b; ZeRO-3: P/d b plus the parameters DeepSpeed keeps gathered
               (min(stage3_max_live_parameters, P) elements)
  optimizer    ZeRO-0: Adam m + v (8 P; mixed precision adds an fp32 master and fp32 gradients, 8 P);
               ZeRO-1/2: fp32 master, m, v and fp32 gradient partitions (16 P/d) plus the model-dtype
               averaged-gradient partition (P/d b);
               ZeRO-3: the same 16 P/d plus the flat gradient partition buffer (4 P/d)
  gradients    ZeRO-0: P b, kept between steps; ZeRO-1/2: produced during backward and reduced, so
               they count in the backward-end phase: P b, except that ZeRO-1 keeps them (P b) while
               the next micro-batches run when it accumulates (more than one micro-batch, or any
               pipeline); ZeRO-3: its reduce bucket
               (min(reduce_bucket_size, P) b) stays allocated, and the layer gradients (P b) coexist
               with the last activations during backward
  activations  what our layers save for backward, per micro-batch (elements per token and layer below),
               times the micro-batches a stage holds in flight (1F1B: PP - stage; else 1); with
               activation checkpointing each layer's input only, plus one layer recomputed
  head         final norm / output layer inputs and the cross-entropy's fp32 softmax [N, V/t]
  working      one layer's activations (the gradients flowing through the layer being back-propagated)
backward start = activations + head + working (+ gradients alive with them, see above);
backward end = gradients (+ the all-gather bucket of ZeRO-1/2's update, min(allgather_bucket_size, P) b).
Activation elements saved per token of a layer (t = TP, n = tokens a rank holds in the residual
stream: N/t with sequence parallelism else N; full-sequence tensors after the SP all-gather are N):
  norm inputs 2 h (n) | QKV and FFN-up inputs 2 h (n: under SP only the local slice is kept and
  all-gathered again in backward) | SDPA q, k, v, out (2 hq + 2 hkv) d / t (N)
  | W_O input hq d / t (N) | SwiGLU gate, up 2 f / t (N) | FFN-down input f / t (N)
  | QK-norm inputs (hq + hkv) d / t (N) when on; fp32 RMS and log-sum-exp statistics
  and one attention mask per micro-batch, shared by all layers, in the form its kernel uses
  (model/attention_mask.py: on an accelerator FlexAttention's block indices, KBs; on CPU the dense
  bool [b, s, s]; nothing without document masking).
DeepSpeed's buffers follow DeepSpeed 0.19's ZeRO implementation (checked against measured memory on
CPU in tests/planner/test_planner.py); other versions may differ by a bucket or two.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict

from ..config.parallel_layout import ParallelLayout
from ..model.attention_mask import kernel_for, mask_bytes
from ..model.settings import ModelSettings
from .params import rank_params, stage_layers

GB = 2 ** 30


@dataclass(frozen=True)
class Memory:
    weights: float
    optimizer: float
    gradients: float       # persistent gradient buffers (ZeRO-0 gradients, ZeRO-3 reduce bucket)
    activations: float
    head: float
    working: float
    grads_in_backward: float  # gradients alive together with the activations (ZeRO-1 accumulating, ZeRO-3)
    backward_end: float    # gradients and buckets alive at the end of backward / in the step
    reserve: float
    stage: int

    @property
    def persistent(self) -> float:
        return self.weights + self.optimizer + self.gradients

    @property
    def total(self) -> float:
        start = self.activations + self.head + self.working + self.grads_in_backward
        return self.persistent + max(start, self.backward_end) + self.reserve

    def as_gb(self) -> Dict[str, float]:
        d = {k: v / GB for k, v in asdict(self).items() if k != "stage"}
        d["total"] = self.total / GB
        d["stage"] = self.stage
        return d


def layer_activation_bytes(s: ModelSettings, L: ParallelLayout, seq: int, act_bytes: int) -> float:
    """Bytes one layer saves for backward for one micro-batch."""
    t, h, d, f = L.tp, s.hidden_size, s.head_dim, s.ffn_hidden_size
    N = seq * L.micro_batch_size
    n = N / t if L.sequence_parallel else N  # the layout holds the effective flag
    hq, hkv = s.num_heads * d, s.num_kv_heads * d
    elems = 2 * h * n + 2 * h * n
    elems += N * ((2 * hq + 2 * hkv) / t + hq / t + 3 * f / t)
    if s.qk_norm:
        elems += N * (hq + hkv) / t
    fp32_stats = 4 * (2 * n + N * s.num_heads / t + (2 * N * (s.num_heads + s.num_kv_heads) / t if s.qk_norm else 0))
    return elems * act_bytes + fp32_stats


@dataclass(frozen=True)
class ZeroBuffers:
    """DeepSpeed's ZeRO buffer sizes in elements (its defaults; the run's DeepSpeed config leaves them)."""
    reduce_bucket: float = 5e8     # reduce_bucket_size
    allgather_bucket: float = 5e8  # allgather_bucket_size
    max_live_params: float = 1e9   # stage3_max_live_parameters


def memory(s: ModelSettings, L: ParallelLayout, seq: int, param_bytes: int, reserve_gb: float = 0.0,
           on_accelerator: bool = True, zero: ZeroBuffers = ZeroBuffers()) -> Memory:
    """The worst stage's breakdown (bytes). `param_bytes`: 2 for bf16 training, 4 for fp32.
    `on_accelerator`: the run's device type, which decides the attention mask's form."""
    worst = None
    b, mixed = param_bytes, param_bytes < 4
    for stage in range(L.pp):
        rp = rank_params(s, L.tp, L.pp, stage)
        P = rp.total
        grads_persistent = grads_in_backward = 0.0
        if L.zero_stage == 0:
            weights = P * b
            optimizer = 8 * P + (8 * P if mixed else 0)
            grads_persistent = P * b
            backward_end = 0.0
        elif L.zero_stage in (1, 2):
            weights = P * b
            optimizer = 16 * P / L.dp + P / L.dp * b
            backward_end = P * b + min(zero.allgather_bucket, P) * b
            if L.zero_stage == 1 and (L.grad_accum > 1 or L.pp > 1):
                grads_in_backward = P * b  # ZeRO-1 keeps full gradients until the boundary's reduction
        else:
            weights = P / L.dp * b + min(zero.max_live_params, P) * b
            optimizer = 16 * P / L.dp + 4 * P / L.dp
            grads_persistent = min(zero.reduce_bucket, P) * b
            grads_in_backward = backward_end = P * b
        layers = len(stage_layers(s.num_layers, L.pp, stage))
        in_flight = min(L.pp - stage, L.grad_accum) if L.pp > 1 else 1
        per_layer = layer_activation_bytes(s, L, seq, b)
        N = seq * L.micro_batch_size
        n = N / L.tp if L.sequence_parallel else N
        if L.activation_checkpointing:
            acts = in_flight * layers * n * s.hidden_size * b + per_layer
        else:
            acts = in_flight * layers * per_layer
        acts += in_flight * mask_bytes(L.micro_batch_size, seq, kernel_for(on_accelerator, s.document_masking))
        head = 0.0
        if stage == L.pp - 1:
            head = (n + N) * s.hidden_size * b + N * s.padded_vocab(L.tp) / L.tp * 4
        m = Memory(weights, optimizer, grads_persistent, acts, head, per_layer if layers else 0.0,
                   grads_in_backward, backward_end, reserve_gb * GB, stage)
        if worst is None or m.total > worst.total:
            worst = m
    return worst
