"""Between a training engine of any layout and the universal checkpoint.

Export: every rank walks its parameters in the same order; DeepSpeed's `safe_get_full_*` assembles a
parameter's fp32 master and Adam states over the ZeRO/DP group, `gather_full` joins the TP shards (from
the parameters' own tags), and one writer per pipeline stage (DP rank 0, TP rank 0) streams them into
shards. Import reverses it: split each full tensor for this TP rank, write the model weight and, through
`safe_set_full_*`, the fp32 master and Adam states. Together they reshard a run losslessly between any
TP / PP / DP layouts and ZeRO stages 0-3 (under ZeRO-3 each weight is written through a gather of its
partitions, one parameter at a time: an import is a one-off, memory matters more than collectives).
Vocabulary rows (embedding, output layer) are padded or truncated to the target layout's padding;
rows beyond the true vocabulary are never used. Per-rank RNG states are not carried (dropout streams
depend on the layout).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..distributed.startup import barrier_if_distributed
from ..tensor_parallel.layout import gather_full, split_full
from ..tensor_parallel.param_meta import tp_partition
from .canonical_names import VOCAB_PARAMS, canonical_names, fit_vocab
from .universal import ShardWriter, Universal, fresh_temp_dir, publish, temp_dir

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def _local_shard(full: torch.Tensor, canon: str, p: torch.Tensor, tp_rank: int, tp_size: int,
                 vocab_rows: int) -> torch.Tensor:
    """This TP rank's piece of a full tensor (a weight or one of its optimizer states) for parameter p."""
    if canon in VOCAB_PARAMS:
        full = fit_vocab(full, vocab_rows)
    dim, blocks = tp_partition(p)
    return split_full(full, dim, tp_rank, tp_size, blocks)


def _link_optimizer_states(engine) -> None:
    """(Re)link each parameter to its optimizer-state fragments, which safe_*_optimizer_state read.

    DeepSpeed (0.19) links lazily, once, after the first optimizer step. ZeRO-1/2 steps one parameter
    group at a time and links after the *first group's* step, so every later group (here: the
    weight-decay group, i.e. all matrices) is linked to still-empty states and never again: a live
    engine's export would find no Adam states. A fresh or just-loaded engine has no link at all.
    Relinking is idempotent (views on the current state tensors), so clear the flag and link every
    time (private methods of the ZeRO-1/2 and BF16 optimizers; absent elsewhere)."""
    opt = engine.optimizer
    link = getattr(opt, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        opt._hp_optimizer_states_linked = False
        link()


def _ensure_adam_states(engine) -> None:
    """torch's AdamW creates its state at the first step; a fresh engine receiving a checkpoint's states
    needs them to exist (zeros, step 0; overwritten right after). ZeRO-3 keeps its fp32 partitions out
    of the torch optimizer's param_groups between steps, so take them from the ZeRO-3 optimizer."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    params = [p for group in inner.param_groups for p in group["params"]]
    for p in params + list(getattr(engine.optimizer, "fp32_partitioned_groups_flat", [])):
        if not inner.state.get(p):
            inner.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                              "exp_avg_sq": torch.zeros_like(p)}


def _local_optimizer_state(engine, p, key) -> Optional[torch.Tensor]:
    from deepspeed.utils import safe_get_full_optimizer_state
    st = safe_get_full_optimizer_state(p, key)
    if st is None:  # ZeRO-0: DeepSpeed drives the torch optimizer directly
        st = getattr(engine.optimizer, "state", {}).get(p, {}).get(key)
    return st


def export_engine(path: str, engine, topo, settings, cfg, training_state: dict) -> None:
    """Write a DeepSpeed engine's model + optimizer, and `training_state` (step, LR schedule, loader position:
    plain values, from rank 0), as a universal checkpoint of the model `settings` / `cfg` describe
    (collective over the engine's `topo`)."""
    from deepspeed.utils import safe_get_full_fp32_param
    s = settings
    module = engine.module
    names = canonical_names(module, topo.pp_size > 1, s.num_layers)
    writer = topo.dp_rank == 0 and topo.tp_rank == 0
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    tmp = fresh_temp_dir(path) if rank == 0 else temp_dir(path)
    barrier_if_distributed()
    model = ShardWriter(tmp, f"model-stage{topo.pp_rank}")
    optim = ShardWriter(tmp, f"optim-stage{topo.pp_rank}")
    _link_optimizer_states(engine)
    has_optimizer = True
    for local, p in module.named_parameters():
        hp = safe_get_full_fp32_param(p)
        full = gather_full(hp if hp is not None else p.detach().float(), p, topo.tp_group)
        if writer:
            model.add(names[local], full)
        for key in ADAM_KEYS:
            st = _local_optimizer_state(engine, p, key)
            if st is None:
                has_optimizer = False  # before the first step there is nothing to carry
                continue
            full = gather_full(st.float(), p, topo.tp_group)
            if writer:
                optim.add(f"{names[local]}/{key}", full)
    model.flush()
    optim.flush()
    barrier_if_distributed()
    if rank == 0:
        publish(path, cfg, {"step": training_state["step"], "has_optimizer": has_optimizer,
                            "vocab_rows": s.padded_vocab(topo.tp_size), "vocab_size": s.vocab_size}, training_state)
    barrier_if_distributed()


def import_engine(path: str, engine, topo, settings) -> dict:
    """Load a universal checkpoint into a DeepSpeed engine of any layout (`topo`); returns its training
    state (step, LR schedule, loader position) for the caller to hand to its own stateful parts."""
    from deepspeed.runtime.zero import GatheredParameters
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
    s = settings
    uni = Universal(path)
    module = engine.module
    names = canonical_names(module, topo.pp_size > 1, s.num_layers)
    with_optimizer = uni.meta.get("has_optimizer", False)
    torch_opt_state = getattr(engine.optimizer, "state", None)
    if with_optimizer:
        _ensure_adam_states(engine)
        _link_optimizer_states(engine)
    with torch.no_grad():
        for local, p in module.named_parameters():
            canon = names[local]

            def shard(t):
                return _local_shard(t, canon, p, topo.tp_rank, topo.tp_size, s.padded_vocab(topo.tp_size)).to(p.device)
            w = shard(uni.get(canon))
            # ZeRO-3: gather p's partitions, write, re-partition DP rank 0's value (every rank writes the
            # same); a no-op context for any other parameter
            with GatheredParameters([p], modifier_rank=0):
                p.data.copy_(w.to(p.dtype))
            safe_set_full_fp32_param(p, w)
            if not with_optimizer:
                continue
            for key in ADAM_KEYS:
                st = shard(uni.optimizer_state(canon, key))
                if hasattr(p, "_hp_mapping") or hasattr(p, "ds_id"):
                    safe_set_full_optimizer_state(p, st, key)
                elif torch_opt_state is not None:
                    torch_opt_state.setdefault(p, {})[key] = st.clone()
    if with_optimizer:
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        step = torch.tensor(float(uni.state["step"]))
        for st in inner.state.values():
            st["step"] = step.clone()
    engine.global_steps = uni.state.get("step", 0)
    return uni.state


def load_weights(model, get, tp_group=None) -> None:
    """Fill a bare MoTModel from `get(canonical name) -> full tensor` (this TP rank's shards; a tied
    embedding is one parameter, listed once)."""
    from ..distributed.collectives import group_rank, group_size
    names = canonical_names(model, False, model.settings.num_layers)
    tp, rank = group_size(tp_group), group_rank(tp_group)
    with torch.no_grad():
        for local, p in model.named_parameters():
            full = get(names[local])
            p.copy_(_local_shard(full, names[local], p, rank, tp, model.settings.padded_vocab(tp)).to(p.dtype))


def load_universal_into_model(model, path: str, tp_group=None) -> Universal:
    """Weights only, into a bare MoTModel (inference, conversion checks); TP via `tp_group`."""
    uni = Universal(path)
    load_weights(model, uni.get, tp_group)
    return uni
