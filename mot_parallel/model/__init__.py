"""The MoT model: routing plan (routing.py), grouped kernels (grouped_ops.py), per-modality TP linears
(grouped_linear.py), norms, RoPE, attention, SwiGLU, the layer and the full model."""
from .attention import MoTSelfAttention
from .ffn import MoTSwiGLU
from .layer import MoTLayer
from .model import IGNORE_INDEX, LossOutput, MoTEmbedding, MoTHead, MoTModel, plan_for
from .norms import ModalityRMSNorm
from .routing import RoutingPlan, build_routing_plan, positions_from_segments
from .settings import ModelSettings

__all__ = ["IGNORE_INDEX", "LossOutput", "ModalityRMSNorm", "ModelSettings", "MoTEmbedding", "MoTHead", "MoTLayer",
           "MoTModel", "MoTSelfAttention", "MoTSwiGLU", "RoutingPlan", "build_routing_plan", "plan_for",
           "positions_from_segments"]
