"""Load a converted or trained model in one line and run it:

    import mot_parallel
    model = mot_parallel.load_pretrained("path/to/checkpoint")     # exported or universal directory
    logits = model(tokens, modality_ids)                           # [b, s] ints -> [b, s, vocab] float

Single process, TP = 1; the routing plan is built on the host from `modality_ids`. `device` and `dtype`
choose where and how it runs (fp32 on CPU by default).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .config import load_config
from .model import ModelSettings, MoTModel


class MoTForInference(nn.Module):
    def __init__(self, model: MoTModel):
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, modality_ids: torch.Tensor, segment_ids=None) -> torch.Tensor:
        """tokens, modality_ids (and optional document ids): [b, s] -> logits [b, s, vocab_size]."""
        m = self.model
        plan = m.build_plan(modality_ids.t().cpu(), segment_ids.t().cpu() if segment_ids is not None else None)
        logits = m(tokens.t().to(next(m.parameters()).device), plan)  # [N, V_padded], grouped order
        logits = plan.to_sequence(logits)[:, :m.settings.vocab_size]
        return logits.view(plan.seq_len, plan.batch, -1).transpose(0, 1)


def load_pretrained(path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> MoTForInference:
    from .convert.universal import is_universal
    cfg = load_config(os.path.join(path, "config.yaml"), ["parallel.tensor_parallel=1", "parallel.pipeline_parallel=1",
                                                           "parallel.sequence_parallel=false"])
    settings = ModelSettings.from_config(cfg, params_dtype=dtype).with_(perform_initialization=False,
                                                                         attention_dropout=0.0, hidden_dropout=0.0)
    model = MoTModel(settings, device=device)
    if is_universal(path):
        from .convert.engine_io import load_universal_into_model
        load_universal_into_model(model, path)
    else:  # a single-file export (tools/convert_checkpoint.py export)
        from safetensors.torch import load_file
        from .convert.engine_io import load_weights
        state = load_file(os.path.join(path, "model.safetensors"))
        load_weights(model, state.__getitem__)
    return MoTForInference(model.eval())
