"""Run metrics: <run>/metrics.jsonl (one object per logged step or evaluation, "kind": "train" | "valid"),
TensorBoard events under <run>/tensorboard (valid/loss/<modality> for evaluations), and a one-line
console log with ETA on rank 0.

FLOPs count MoT as its dense equivalent (causal attention halved, SwiGLU x3, GQA; see flops.py), so
tokens/s, TFLOP/s per device and MFU are comparable with a dense model of the same width.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

from ..distributed.accelerators import peak_tflops
from ..flops import continuous_flops_per_token, training_flops_per_token


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricsLogger:
    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool, total_steps: int, resume_step: int = 0):
        self.enabled, self.total_steps = enabled, total_steps
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.writer = None
        self.t0, self.step0 = time.time(), resume_step
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._truncate_after(resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=resume_step + 1)

    def _truncate_after(self, step: int) -> None:
        """A resumed run replays the steps after its checkpoint: drop their old lines (atomic rewrite)."""
        if not os.path.isfile(self.path):
            return
        with open(self.path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(self.path + ".tmp", self.path)

    def log(self, record: Dict) -> None:
        if not self.enabled:
            return
        if record.get("kind") == "valid":
            return self._log_valid(record)
        self._write(record)
        step = record["step"]
        done = step - self.step0
        eta = (time.time() - self.t0) / max(done, 1) * (self.total_steps - step)
        mods = " ".join(f"{k[5:]} {v:.3f}" for k, v in record.items() if k.startswith("loss/") and v is not None)
        mfu = f" | MFU {record['mfu']:.1%}" if record.get("mfu") is not None else ""
        print(f"step {step}/{self.total_steps} | loss {record['loss']:.4f} ({mods}) | lr {record['lr']:.2e} | "
              f"grad {record['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s | "
              f"{record['tflops_per_device']:.3f} TFLOP/s/dev{mfu} | {record['step_time_s']:.2f} s/step | "
              f"mem {record['peak_mem_gb']:.2f} GB | ETA {_fmt_time(eta)}", flush=True)

    def _write(self, record: Dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.writer.add_scalar(k, v, record["step"])
            self.writer.flush()

    def _log_valid(self, record: Dict) -> None:
        self._write(record)
        mods = " ".join(f"{k[11:]} {v:.3f}" for k, v in record.items() if k.startswith("valid/loss/") and v is not None)
        print(f"validation at step {record['step']} | loss {record['valid/loss']:.4f} ({mods}) | "
              f"{record['eval_time_s']:.2f} s", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def objective(loss_sum, weights) -> float:
    """The training objective from per-modality loss sums and the step's weights (model.objective_weights):
    the mean loss per target token; with continuous modalities LM mean + lambda x diffusion means."""
    return float(sum(float(s) * float(w) for s, w in zip(loss_sum, weights)))


@dataclass(frozen=True)
class StepStats:
    """One optimizer step as the trainer measured it (per-modality lists follow model.modalities)."""
    step: int
    loss_sum: Sequence[float]      # summed loss per modality over the global batch
    counts: Sequence[int]          # loss targets per modality over the global batch
    weights: Sequence[float]       # the objective's weight per modality (model.objective_weights)
    lr: float
    grad_norm: Optional[float]     # None where the engine has none (before the first optimizer step)
    step_time: float               # seconds of the whole step, data included
    peak_mem_gb: float
    times: Dict[str, Optional[float]] = field(default_factory=dict)  # phase -> seconds ("data", "forward", ...)


@dataclass(frozen=True)
class ThroughputBasis:
    """What turns a step's time into throughput; fixed for a run."""
    modalities: Sequence[str]
    tokens_per_step: int
    flops_per_token: float         # executed: recompute included
    model_flops_per_token: float   # the model's: 3 x forward, dense-equivalent
    world_size: int
    peak_tflops: Optional[float]   # per device; None: MFU unknown
    # continuous modality id -> training FLOPs (3 x forward) its encoder and decoder add per image token
    continuous_flops_per_token: Dict[int, float] = field(default_factory=dict)

    @classmethod
    def of_run(cls, cfg, settings, layout, world_size: int, device_name: str) -> "ThroughputBasis":
        """A run's basis: its global batch of max_seq_len tokens, FLOPs per token (flops.py) with and without
        recompute, and the device's peak (logging.peak_tflops, else the table's for `device_name`)."""
        seq, recompute = cfg.model.max_seq_len, cfg.train.activation_checkpointing
        return cls(cfg.model.modalities, tokens_per_step=layout.global_batch_size * seq, world_size=world_size,
                   flops_per_token=training_flops_per_token(settings, seq, recompute=recompute),
                   model_flops_per_token=training_flops_per_token(settings, seq),
                   peak_tflops=cfg.logging.peak_tflops or peak_tflops(device_name),
                   continuous_flops_per_token={settings.modalities.index(c.name): 3 * continuous_flops_per_token(
                       settings, c) for c in settings.continuous})

    def model_flops(self, tokens: int, label_counts: Sequence[float]) -> float:
        """A step's model FLOPs: the transformer's per token, plus each continuous modality's patch encoder and
        decoder per image token (`label_counts`: the global batch's targets per modality, host values; every
        patch is a target). The U-Net's convolutions are most of an image token's cost at small widths, so a
        FLOPs axis without them would compare encoders wrongly."""
        return self.model_flops_per_token * tokens + self.encoder_flops(label_counts)

    def encoder_flops(self, label_counts: Sequence[float]) -> float:
        """The continuous modalities' patch encoder and decoder FLOPs of a step (`label_counts` as model_flops)."""
        return sum(f * float(label_counts[m]) for m, f in self.continuous_flops_per_token.items())


def step_record(stats: StepStats, basis: ThroughputBasis) -> Dict:
    """"loss" is the objective; loss/<modality> the mean loss per target of that modality.
    tflops_per_device counts what the hardware executes (recompute included, as Megatron reports);
    mfu counts model FLOPs only (3 x forward, dense-equivalent), against the device's peak. Both include the
    continuous modalities' patch encoders and decoders per image token (`stats.counts`: every patch is a
    target), which activation checkpointing does not recompute."""
    rec = {"kind": "train", "step": stats.step, "loss": objective(stats.loss_sum, stats.weights)}
    for m, s, c in zip(basis.modalities, stats.loss_sum, stats.counts):
        rec[f"loss/{m}"] = float(s) / c if c > 0 else None
        rec[f"tokens/{m}"] = int(c)
    tokens, seconds, world = basis.tokens_per_step, stats.step_time, basis.world_size
    encoders = basis.encoder_flops(stats.counts)
    tflops = (basis.flops_per_token * tokens + encoders) / seconds / world / 1e12
    model_tflops = (basis.model_flops_per_token * tokens + encoders) / seconds / world / 1e12
    grad_norm = float(stats.grad_norm) if stats.grad_norm is not None else float("nan")
    rec.update({"lr": stats.lr, "grad_norm": grad_norm, "tokens_per_s": tokens / seconds,
                "tflops_per_device": tflops, "mfu": model_tflops / basis.peak_tflops if basis.peak_tflops else None,
                "step_time_s": stats.step_time, "peak_mem_gb": stats.peak_mem_gb})
    rec.update({f"time/{k}_s": v for k, v in stats.times.items()})
    return rec


def valid_record(step: int, loss_sum, counts, weights, modalities, progress: Dict, eval_time: float) -> Dict:
    """Validation losses (per target modality: the mean per target; overall: the objective, with the
    validation batches' weights) at a training position (`progress`: tokens_total, flops_total, train_time_s)."""
    rec = {"kind": "valid", "step": step, "valid/loss": objective(loss_sum, weights)}
    for m, s, c in zip(modalities, loss_sum, counts):
        rec[f"valid/loss/{m}"] = float(s) / c if c > 0 else None
        rec[f"valid/tokens/{m}"] = int(c)
    rec.update(progress)
    rec["eval_time_s"] = eval_time
    return rec
