"""`ModelSettings`: the resolved, frozen view of `Config.model`: what the model is, never how it is split.

It doubles as the Megatron-style `config` object our submodules read (`params_dtype`,
`perform_initialization`), so the same constructors work under Megatron's keywords. Nothing here depends
on the layout: a module takes the split from the `ParallelContext` it is given (TP group, size, rank,
sequence parallelism; distributed/parallel_context.py), and the vocabulary is padded for the group's size
by `padded_vocab(tp)`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import FrozenSet, Optional, Tuple

import torch

from ..config import Config, ffn_hidden_size, num_kv_heads
from .rope import RopeScaling


@dataclass(frozen=True)
class ContinuousSpec:
    """A continuous modality (Transfusion): an image as `grid` patches of `channels * patch^2` values."""
    name: str
    channels: int
    patch: int
    grid: Tuple[int, int]
    source: str = "latents"            # 'latents' (VAE) or 'pixels' (RGB in [-1, 1])
    boi_token: Optional[int] = None
    eoi_token: Optional[int] = None
    patch_encoder: str = "linear"      # 'linear' or 'unet' (model/unet.py)
    unet_channels: int = 32
    position_embedding: str = "none"   # 'none' or 'sincos2d' (model/image_positions.py)

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch * self.patch

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def unet(self) -> bool:
        return self.patch_encoder == "unet"


# config precision names -> parameter dtypes (training precision, export dtype)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelSettings:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int
    modalities: Tuple[str, ...]
    untie: FrozenSet[str] = frozenset({"attention", "ffn", "norms"})
    norm_placement: str = "pre"
    qk_norm: bool = False
    qkv_bias: bool = False
    untie_final_norm: bool = False
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    init_std: float = 0.02
    scale_output_by_depth: bool = True
    modality_copies: str = "independent"
    seed: int = 1234
    vocab_multiple: int = 128             # embedding/head rows are padded to a multiple of this x TP size
    document_masking: bool = True
    continuous: Tuple[ContinuousSpec, ...] = ()   # continuous modalities (Transfusion), in modality order
    diffusion_timesteps: int = 1000
    diffusion_prediction: str = "epsilon"   # what the continuous head predicts: 'epsilon' or 'v' (diffusion.py)
    diffusion_loss_weight: float = 5.0
    params_dtype: torch.dtype = torch.float32
    perform_initialization: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def groups(self, part: str) -> int:
        """Copies of `part` ('attention' | 'ffn' | 'norms'): one per modality if untied, else one."""
        return self.num_modalities if part in self.untie else 1

    def copies(self, part: str) -> Optional[Tuple[str, ...]]:
        """Modality names owning a copy of `part`, or None when it is shared."""
        return self.modalities if part in self.untie else None

    def padded_vocab(self, tp_size: int) -> int:
        """Embedding/output rows at TP size `tp_size`: Megatron's padding to vocab_multiple x tp (padded
        logits are masked out of the loss; checkpoints convert between paddings, convert/names.py)."""
        mult = self.vocab_multiple * tp_size
        return -(-self.vocab_size // mult) * mult

    @property
    def routed(self) -> bool:
        """Whether any part is per modality (False = the dense path, zero routing cost). With one
        modality the grouping is the identity and costs nothing either. Continuous modalities always
        route: their input/output projections act on their contiguous slice of the grouped stream."""
        return bool(self.untie or self.untie_final_norm or self.continuous)

    def continuous_ids(self) -> Tuple[int, ...]:
        """Modality ids of the continuous modalities."""
        return tuple(self.modalities.index(c.name) for c in self.continuous)

    def spec(self, modality: str) -> Optional[ContinuousSpec]:
        return next((c for c in self.continuous if c.name == modality), None)

    def with_(self, **changes) -> "ModelSettings":
        return replace(self, **changes)

    @classmethod
    def from_config(cls, cfg: Config, params_dtype: Optional[torch.dtype] = None) -> "ModelSettings":
        m = cfg.model
        return cls(
            hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
            num_kv_heads=num_kv_heads(cfg), ffn_hidden_size=ffn_hidden_size(cfg), vocab_size=m.vocab_size,
            vocab_multiple=m.make_vocab_size_divisible_by, modalities=tuple(m.modalities), untie=frozenset(m.untie),
            norm_placement=m.norm_placement, qk_norm=m.qk_norm, untie_final_norm=m.untie_final_norm,
            tie_embeddings=m.tie_embeddings, norm_eps=m.norm_eps, rope_theta=m.rope_theta,
            rope_scaling=RopeScaling.from_config(m.rope_scaling), qkv_bias=m.qkv_bias,
            attention_dropout=m.attention_dropout, hidden_dropout=m.hidden_dropout, init_std=m.init.std,
            scale_output_by_depth=m.init.scale_output_by_depth, modality_copies=m.init.modality_copies,
            seed=cfg.train.seed,
            document_masking=cfg.data.document_masking, params_dtype=params_dtype or torch.float32,
            continuous=continuous_specs(cfg), diffusion_timesteps=cfg.diffusion.timesteps,
            diffusion_prediction=cfg.diffusion.prediction,
            diffusion_loss_weight=cfg.diffusion.loss_weight)


def continuous_specs(cfg: Config) -> Tuple[ContinuousSpec, ...]:
    """The config's continuous modalities, in modality order."""
    out = []
    for name in cfg.model.modalities:
        c = cfg.model.continuous.get(name)
        if c is not None:
            out.append(ContinuousSpec(name, c.channels, c.patch, (int(c.grid[0]), int(c.grid[1])), c.source,
                                      c.boi_token, c.eoi_token, c.patch_encoder, c.unet_channels,
                                      c.position_embedding))
    return tuple(out)
