"""mot_parallel: Mixture-of-Transformers (Liang et al., arXiv 2411.04996) with tensor, sequence, pipeline
and ZeRO data parallelism, on DeepSpeed and inside Megatron-Core.

Runtime (what a training or sampling job runs): config/ (typed config), distributed/ (start-up, topology,
collectives, accelerators), tensor_parallel/ (TP/SP primitives), model/ (the MoT model), data/ (corpus format,
packing, loader), training/, planner/, convert/ (checkpoints), megatron/ (the Megatron-Core plug-in).
Tooling (tools/ and tests only): corpus_building/, studies/, testing/ (multi-process harness).
See docs/code_map.md for a tour and DESIGN.md section 19 for the rule.
"""
__version__ = "0.1.0"


def load_pretrained(path, device="cpu", dtype=None):
    """`model = mot_parallel.load_pretrained(dir); logits = model(tokens, modality_ids)` (see inference.py)."""
    import torch

    from .inference import load_pretrained as _load
    return _load(path, device, dtype or torch.float32)
