"""Whole-training-step GPU questions (tools/gpu_check.py runs each in its own process):

  no_sync_step   one MoT training step as the trainer does it - batch to the device, routing plan and
                 attention mask from host ids, forward, loss, backward, clipping, fused AdamW - under
                 CUDA sync-debug mode: 'warn' lists every synchronising call site, 'error' must pass
  ds_child       the real trainer (launch/pretrain.py's path: DeepSpeed engine, loader, metrics) with
                 sync-debug 'warn' over a few whole steps after warm-up; writes a probe JSON per step
                 (sync sites, planner memory estimate) while tools/gpu_check.py watches metrics.jsonl
  ds_summary     tokens/s, MFU and peak memory of that run vs the planner's estimate, from both files
"""
from __future__ import annotations

import json
import os
import statistics
import warnings
from typing import Dict, List, Optional

import torch

from ...distributed import device as dev
from ...model import ModelSettings, MoTModel

SYNC_WORDS = ("synchroniz", "synchronis")


class SyncSites:
    """Collect sync-debug warnings (one per synchronising call) with their Python location."""

    def __init__(self):
        self.sites: Dict[str, List[int]] = {}
        self.step = 0
        self.previous = warnings.showwarning

    def install(self) -> None:
        """Route warnings through `hook` (call inside warnings.catch_warnings(), or for the process)."""
        warnings.simplefilter("always")
        self.previous, warnings.showwarning = warnings.showwarning, self.hook

    def hook(self, message, category, filename, lineno, file=None, line=None):
        if any(w in str(message).lower() for w in SYNC_WORDS):
            self.sites.setdefault(f"{_short(filename)}:{lineno}", []).append(self.step)
        else:
            self.previous(message, category, filename, lineno, file, line)


def _short(path: str) -> str:
    for marker in ("mot_parallel/", "site-packages/", "tools/", "launch/"):
        if marker in path:
            return marker.rstrip("/") + "/" + path.split(marker, 1)[1] if marker != "site-packages/" \
                else path.split(marker, 1)[1]
    return path


def _batch(settings: ModelSettings, seq: int, batch: int, seed: int):
    from ...data.batch import MicroBatch
    from .kernels import packed_documents
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, settings.vocab_size, (seq, batch), generator=g)
    mods = (torch.arange(seq).unsqueeze(1) // 256 + seed) % settings.num_modalities  # runs of 256 tokens
    mods = mods.expand(seq, batch).contiguous()
    labels = torch.roll(tokens, -1, 0)
    counts = torch.bincount(mods.reshape(-1), minlength=settings.num_modalities).float()
    return MicroBatch(tokens, labels, mods, mods.clone(), packed_documents(seq, batch, seed, (seq // 8, seq // 2)),
                      counts)


def no_sync_step(shape: Dict) -> Dict:
    """shape["step_model"]: hidden, layers, heads, kv_heads, ffn, vocab, seq (a small model: the question is
    whether anything synchronises, not speed)."""
    device = dev.pick_device(0)
    dtype = torch.bfloat16 if shape.get("dtype", "bf16") == "bf16" else torch.float32
    shape = dict(shape["step_model"], batch=shape.get("batch", 1))
    s = ModelSettings(hidden_size=shape["hidden"], num_layers=shape["layers"], num_heads=shape["heads"],
                      num_kv_heads=shape["kv_heads"], ffn_hidden_size=shape["ffn"], vocab_size=shape["vocab"],
                      vocab_multiple=1, modalities=("text", "image", "speech"), qk_norm=True,
                      params_dtype=dtype, document_masking=True)
    model = MoTModel(s, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if dev.is_accelerator(device) else {}))

    def step(seed: int):
        mb = _batch(s, shape["seq"], shape.get("batch", 1), seed)
        norm = float(mb.global_label_counts.sum())  # host, as the trainer's normaliser
        mb = mb.to(device)
        plan = model.build_plan(mb.modality_ids, mb.segment_ids, device)
        out = model(mb.tokens, plan, mb.labels, mb.label_modalities)
        (out.loss_sum.sum() / norm).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return plan

    plan = step(0)
    step(1)  # warm-up: kernels compiled, allocator warm
    dev.synchronize(device)
    probe = SyncSites()
    with warnings.catch_warnings():
        probe.install()
        with dev.sync_debug_mode("warn"):
            step(2)
    dev.synchronize(device)
    error = None
    try:
        with dev.sync_debug_mode("error"):
            step(3)
        dev.synchronize(device)
    except RuntimeError as e:
        error = str(e).splitlines()[0][:300]
    on_gpu = dev.is_accelerator(device)
    kernel = plan.attention_mask.kernel if plan.attention_mask is not None else "sdpa_causal"
    what = "batch to device, plan + mask, fwd, loss, bwd, clip, fused AdamW"
    if not on_gpu:
        rows = [("model training step", "ran (CPU: no sync-debug mode)", what)]
    else:
        verdict = "PASS: no host sync" if error is None and not probe.sites else \
            f"FAIL: {len(probe.sites)} sync site(s)"
        rows = [("model training step (sync-debug)", verdict, f"{what}; attention kernel {kernel}")]
        rows += [("  sync site", site, f"{len(steps)} call(s)") for site, steps in sorted(probe.sites.items())]
        if error:
            rows.append(("  error mode", error, ""))
    return {"rows": rows, "data": {"sites": probe.sites, "error_mode": error, "attention_kernel": kernel,
                                   "on_accelerator": on_gpu, "shape": shape}}


def ds_child(probe_path: str, overrides: List[str], sync_steps=(4, 8)) -> None:
    """Train with the real trainer; record sync sites over steps sync_steps[0]..sync_steps[1] (inclusive)."""
    from ...config import load_config, validate
    from ...distributed import detect_launch_env
    from ...flops import param_counts
    from ...planner import memory
    from ...corpus_building import register_demo_corpora
    from ...training import Trainer
    register_demo_corpora()
    cfg = load_config(None, overrides)
    lay = validate(cfg, world_size=1)
    probe = SyncSites()
    info = {"sync_steps": list(sync_steps), "sites": probe.sites}
    mode = {"ctx": None}

    def begin(step):
        probe.step = step
        if step == sync_steps[0] and info["on_accelerator"]:
            dev.synchronize(trainer.device)
            mode["ctx"] = dev.sync_debug_mode("warn")
            mode["ctx"].__enter__()

    def end(step):
        if step == sync_steps[1] and mode["ctx"] is not None:
            mode["ctx"].__exit__(None, None, None)
            mode["ctx"] = None
        info["last_step"] = step
        with open(probe_path + ".tmp", "w") as f:
            json.dump(info, f)
        os.replace(probe_path + ".tmp", probe_path)

    trainer = Trainer(cfg, detect_launch_env(argv=[]), on_step_begin=begin, on_step_end=end)
    s, on_acc = trainer.settings, dev.is_accelerator(trainer.device)
    planned = memory(s, lay, cfg.model.max_seq_len, param_bytes=trainer.dtype.itemsize, on_accelerator=on_acc)
    info.update({"planned_gb": planned.as_gb(), "params": param_counts(s), "device": dev.describe(trainer.device),
                 "dtype": str(trainer.dtype), "on_accelerator": on_acc})
    probe.install()
    trainer.train()


def ds_summary(metrics_path: str, probe_path: str, warmup_steps: int) -> Dict:
    records = []
    for line in open(metrics_path):  # the run was killed: the last line may be half-written
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    probe = json.load(open(probe_path))
    steady = [r for r in records if r["step"] > warmup_steps] or records
    tok = statistics.median(r["tokens_per_s"] for r in steady)
    mfu: Optional[float] = statistics.median(r["mfu"] for r in steady) if steady[0].get("mfu") is not None else None
    peak = max(r["peak_mem_gb"] for r in records)
    planned = probe["planned_gb"]["total"]
    sync_from, sync_to = probe["sync_steps"]
    every = {k: v for k, v in probe["sites"].items() if len(set(v)) > (sync_to - sync_from) // 2}
    params = probe["params"]
    on_acc = probe["on_accelerator"]
    rows = [("model", f"{params['total'] / 1e6:,.1f} M parameters ({params['active'] / 1e6:,.1f} M active), "
                      f"{probe['dtype']}", f"{len(records)} logged steps, median of steps > {warmup_steps}"),
            ("tokens/s", f"{tok:,.0f}", f"MFU {mfu:.1%}" if mfu is not None else "MFU: no peak known (CPU)"),
            ("peak memory" + (" (allocated)" if on_acc else " (CPU: process RSS)"), f"{peak:.2f} GiB",
             f"planner {planned:.2f} GiB: measured / planned = {peak / planned:.2f}" +
             ("" if on_acc else " (not comparable on CPU: RSS holds the libraries)"))]
    if on_acc:
        rows.append(("sync sites per step (DeepSpeed trainer)", f"{len(every)} every step, "
                     f"{len(probe['sites']) - len(every)} some steps", f"steps {sync_from}-{sync_to}, sync-debug warn"))
        rows += [("  sync site", site, f"steps {sorted(set(steps))}") for site, steps in sorted(probe["sites"].items())]
    return {"rows": rows, "data": {"tokens_per_s": tok, "mfu": mfu, "peak_mem_gb": peak, "planner": probe["planned_gb"],
                                   "sync_sites": probe["sites"], "records": records[-3:], "params": params}}
