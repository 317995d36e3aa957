"""Megatron's layer keywords, taken in one place: what we implement is returned, what we do not is accepted
only at Megatron's default (where it changes nothing) and refused by name otherwise, never silently ignored.

Megatron's ModuleSpecs and its own callers pass a long tail of keywords to parallel linears; ours take
the parallel split as one `ParallelContext` (`parallel=`) instead of `tp_group` + `config.sequence_parallel`.
"""
from __future__ import annotations

from typing import Dict, Tuple

# Megatron keywords whose default value means "nothing to do" for our layers
_INERT_DEFAULTS: Dict[str, object] = {
    "keep_master_weight_for_test": False, "skip_weight_param_allocation": False, "embedding_activation_buffer": None,
    "grad_output_buffer": None, "is_expert": False, "tp_comm_buffer_name": None, "disable_grad_reduce": False,
    "stride": 1, "reduce_scatter_embeddings": False, "tp_group": None,
}
_ANY_VALUE = {"tp_comm_buffer_name"}  # names a Transformer Engine overlap buffer: nothing to do here
_WHY = {
    "stride": "interleaved (stride > 1) weights are not supported; fused weights are sharded block-wise "
              "(model/grouped_linear.py output blocks)",
    "tp_group": "pass parallel=ParallelContext.of(tp_group, sequence_parallel) instead "
                "(mot_parallel/distributed/parallel_context.py)",
    "sequence_parallel": "pass parallel=ParallelContext.of(tp_group, sequence_parallel) instead",
}


def take_megatron_kwargs(owner: str, kwargs: Dict[str, object], supported: Dict[str, object]) -> Tuple:
    """The values of `supported` (name -> default), in its order; raises naming every other keyword whose
    value is not Megatron's inert default."""
    problems = [f"{k}={v!r}: {_WHY.get(k, 'not supported by this layer')}" for k, v in kwargs.items()
                if k not in supported and k not in _ANY_VALUE and (k not in _INERT_DEFAULTS or v != _INERT_DEFAULTS[k])]
    if problems:
        raise ValueError(f"{owner} cannot honour: " + "; ".join(problems))
    return tuple(kwargs.get(k, d) for k, d in supported.items())
