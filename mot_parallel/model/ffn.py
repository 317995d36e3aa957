"""MoT feed-forward: one SwiGLU per modality, fused gate/up (column-parallel) and down (row-parallel)."""
from __future__ import annotations

import torch
from torch import nn

from ..distributed.parallel_context import SINGLE_PROCESS, ParallelContext
from ..tensor_parallel.weight_init import SeededInit, normal_init, param_seed, scaled_normal_init
from .grouped_linear import GroupedColumnParallelLinear, GroupedRowParallelLinear
from .grouped_ops import swiglu
from .routing import RoutingPlan
from .settings import ModelSettings


class MoTSwiGLU(nn.Module):
    def __init__(self, settings: ModelSettings, layer_number: int, parallel: ParallelContext = SINGLE_PROCESS,
                 device=None):
        super().__init__()
        s = settings
        copies = s.copies("ffn")
        seed = param_seed(s.seed, f"layers.{layer_number}.mlp")
        self.linear_fc1 = GroupedColumnParallelLinear(  # [gate_r; up_r] on each TP rank
            s.hidden_size, [s.ffn_hidden_size, s.ffn_hidden_size], copies, parallel=parallel, config=s,
            init=SeededInit(normal_init(s.init_std), param_seed(seed, "linear_fc1")), device=device)
        out_init = scaled_normal_init(s.init_std, s.num_layers) if s.scale_output_by_depth else normal_init(s.init_std)
        self.linear_fc2 = GroupedRowParallelLinear(
            s.ffn_hidden_size, s.hidden_size, copies, parallel=parallel, config=s,
            init=SeededInit(out_init, param_seed(seed, "linear_fc2")), device=device)

    def forward(self, x: torch.Tensor, plan: RoutingPlan):
        (gate, up), _ = self.linear_fc1.forward_blocks(x, plan)
        return self.linear_fc2(swiglu(gate, up), plan)
