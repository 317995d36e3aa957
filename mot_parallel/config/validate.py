"""Config validation and the derived parallel layout; runs before any process group exists.

`validate(cfg, world_size)` collects every problem and raises one `ConfigError` listing them all,
each naming the dotted key, the offending value and the fix; with a world size it returns the run's
`ParallelLayout` (layout.py), derived here once.
"""
from __future__ import annotations

import math
from typing import List, Optional

from .layout import ParallelLayout
from .loader import ConfigError
from .schema import UNTIE_PARTS, Config


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def ffn_hidden_size(cfg: Config) -> int:
    m = cfg.model
    return m.ffn_hidden_size if m.ffn_hidden_size is not None else -(-(8 * m.hidden_size // 3) // 128) * 128


def num_kv_heads(cfg: Config) -> int:
    return cfg.model.num_kv_heads if cfg.model.num_kv_heads is not None else cfg.model.num_heads


def _model_errors(cfg: Config) -> List[str]:
    m, tp, err = cfg.model, cfg.parallel.tensor_parallel, []
    for key in ("hidden_size", "num_layers", "num_heads", "vocab_size", "max_seq_len", "make_vocab_size_divisible_by"):
        if getattr(m, key) <= 0:
            err.append(f"model.{key}={getattr(m, key)} must be positive")
    if err:
        return err
    if m.hidden_size % m.num_heads:
        err.append(f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads={m.num_heads}; "
                   f"pick heads from {_divisors(m.hidden_size)[:12]}")
    elif (m.hidden_size // m.num_heads) % 2:
        err.append(f"head dim {m.hidden_size // m.num_heads} (model.hidden_size/model.num_heads) must be even for RoPE")
    kv = num_kv_heads(cfg)
    if kv <= 0 or m.num_heads % kv:
        err.append(f"model.num_kv_heads={kv} must divide model.num_heads={m.num_heads}; "
                   f"valid: {_divisors(m.num_heads)}")
    if m.num_heads % tp:
        err.append(f"model.num_heads={m.num_heads} is not divisible by parallel.tensor_parallel={tp}; "
                   f"use tensor_parallel in {_divisors(m.num_heads)}")
    if kv > 0 and kv % tp:
        err.append(f"model.num_kv_heads={kv} is not divisible by parallel.tensor_parallel={tp}; "
                   f"use tensor_parallel in {_divisors(kv)} or more kv heads")
    ffn = ffn_hidden_size(cfg)
    if ffn <= 0 or ffn % tp:
        err.append(f"model.ffn_hidden_size={ffn} must be positive and divisible by parallel.tensor_parallel={tp}")
    if not m.modalities:
        err.append("model.modalities is empty; list at least one modality name, e.g. [text]")
    seen = set()
    for name in m.modalities:
        if not name or not name.replace("_", "").isalnum():
            err.append(f"model.modalities: {name!r} is not a valid name (letters, digits, '_')")
        if name in seen:
            err.append(f"model.modalities: duplicate modality name {name!r}; each modality is listed once")
        seen.add(name)
    for part in m.untie:
        if part not in UNTIE_PARTS:
            err.append(f"model.untie: unknown part {part!r}; use a subset of {list(UNTIE_PARTS)}")
    if len(set(m.untie)) != len(m.untie):
        err.append(f"model.untie={m.untie} lists a part twice")
    for key in ("attention_dropout", "hidden_dropout"):
        if not 0.0 <= getattr(m, key) < 1.0:
            err.append(f"model.{key}={getattr(m, key)} must be in [0, 1)")
    if m.init.std <= 0:
        err.append(f"model.init.std={m.init.std} must be positive")
    if m.rope_theta <= 0 or m.norm_eps <= 0:
        err.append("model.rope_theta and model.norm_eps must be positive")
    r = m.rope_scaling
    if r.rope_type == "llama3" and not (r.factor > 0 and 0 < r.low_freq_factor < r.high_freq_factor
                                        and r.original_max_position_embeddings > 0):
        err.append(f"model.rope_scaling (llama3) needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
                   f"original_max_position_embeddings > 0; got {r}")
    return err


def _parallel_errors(cfg: Config, world_size: Optional[int]) -> List[str]:
    p, m, err = cfg.parallel, cfg.model, []
    for key in ("tensor_parallel", "pipeline_parallel"):
        if getattr(p, key) < 1:
            err.append(f"parallel.{key}={getattr(p, key)} must be >= 1")
    if err:
        return err
    if not (math.isfinite(p.collective_timeout_s) and p.collective_timeout_s > 0):
        err.append(f"parallel.collective_timeout_s={p.collective_timeout_s} must be a positive, finite number of "
                   "seconds (default 1800)")
    if p.zero_stage not in (0, 1, 2, 3):
        err.append(f"parallel.zero_stage={p.zero_stage} must be 0, 1, 2 or 3")
    if p.pipeline_parallel > 1 and p.zero_stage > 1:
        err.append(f"parallel.zero_stage={p.zero_stage} with parallel.pipeline_parallel={p.pipeline_parallel}: "
                   "DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only; set parallel.zero_stage=1 "
                   "(optimizer states still sharded over DP), or pipeline_parallel=1 to use ZeRO-2/3")
    if m.num_layers > 0 and m.num_layers % p.pipeline_parallel:
        err.append(f"model.num_layers={m.num_layers} is not divisible by parallel.pipeline_parallel="
                   f"{p.pipeline_parallel}; use pipeline_parallel in {_divisors(m.num_layers)}")
    if p.sequence_parallel and p.tensor_parallel > 1 and m.max_seq_len % p.tensor_parallel:
        err.append(f"parallel.sequence_parallel needs model.max_seq_len={m.max_seq_len} divisible by "
                   f"parallel.tensor_parallel={p.tensor_parallel}")
    if world_size is not None:
        mp = p.tensor_parallel * p.pipeline_parallel
        if world_size % mp:
            err.append(f"world size {world_size} is not divisible by parallel.tensor_parallel * "
                       f"parallel.pipeline_parallel = {mp}; launch a multiple of {mp} processes")
    return err


def _train_errors(cfg: Config) -> List[str]:
    t, o, s, err = cfg.train, cfg.train.optimizer, cfg.train.lr_schedule, []
    if t.micro_batch_size <= 0:
        err.append(f"train.micro_batch_size={t.micro_batch_size} must be positive")
    if t.global_batch_size is not None and t.global_batch_size <= 0:
        err.append(f"train.global_batch_size={t.global_batch_size} must be positive")
    if t.steps <= 0:
        err.append(f"train.steps={t.steps} must be positive")
    if t.seed < 0:
        err.append(f"train.seed={t.seed} must be >= 0")
    if t.grad_clip < 0:
        err.append(f"train.grad_clip={t.grad_clip} must be >= 0 (0 disables clipping)")
    if o.lr <= 0:
        err.append(f"train.optimizer.lr={o.lr} must be positive")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        err.append(f"train.optimizer.betas={o.betas} must be two numbers in [0, 1)")
    if o.eps <= 0 or o.weight_decay < 0:
        err.append("train.optimizer.eps must be positive and train.optimizer.weight_decay >= 0")
    for name, scale in o.modality_lr_scale.items():
        if name not in cfg.model.modalities:
            err.append(f"train.optimizer.modality_lr_scale: unknown modality {name!r}; "
                       f"model.modalities is {cfg.model.modalities}")
        elif scale < 0:
            err.append(f"train.optimizer.modality_lr_scale.{name}={scale} must be >= 0 (0 freezes the modality)")
    if s.warmup_steps < 0:
        err.append(f"train.lr_schedule.warmup_steps={s.warmup_steps} must be >= 0")
    if not 0.0 <= s.min_lr_ratio <= 1.0:
        err.append(f"train.lr_schedule.min_lr_ratio={s.min_lr_ratio} must be in [0, 1]")
    return err


def atomic_modalities(cfg: Config) -> List[str]:
    """Modalities packing never cuts: data.atomic_modalities (default [image] when there is one), and
    always every continuous modality (an image's patches are one diffusion target)."""
    given = cfg.data.atomic_modalities
    base = list(given) if given is not None else (["image"] if "image" in cfg.model.modalities else [])
    return base + [m for m in cfg.model.modalities if m in cfg.model.continuous and m not in base]


def _continuous_errors(cfg: Config) -> List[str]:
    m, d, err = cfg.model, cfg.diffusion, []
    for name, c in m.continuous.items():
        key = f"model.continuous.{name}"
        if name not in m.modalities:
            err.append(f"{key}: {name!r} is not in model.modalities {m.modalities}")
        if c.channels < 1 or c.patch < 1:
            err.append(f"{key}: channels={c.channels} and patch={c.patch} must be >= 1")
        if len(c.grid) != 2 or min(c.grid) < 1:
            err.append(f"{key}.grid={c.grid} must be [height, width] in patches, both >= 1")
        elif m.max_seq_len < c.grid[0] * c.grid[1] + 2:
            err.append(f"model.max_seq_len={m.max_seq_len} cannot hold one {name} ({c.grid[0] * c.grid[1]} patches "
                       "and its BOI/EOI markers); raise it or use a smaller grid")
        for marker in ("boi_token", "eoi_token"):
            value = getattr(c, marker)
            if value is not None and not 0 <= value < m.vocab_size:
                err.append(f"{key}.{marker}={value} is outside the vocabulary [0, {m.vocab_size})")
    if m.continuous:
        if not cfg.data.document_masking:
            err.append("model.continuous needs data.document_masking=true (images attend bidirectionally within "
                       "themselves, a mask built with the document boundaries)")
        if not (math.isfinite(d.loss_weight) and d.loss_weight >= 0):
            err.append(f"diffusion.loss_weight={d.loss_weight} must be a finite number >= 0")
        if d.timesteps < 2:
            err.append(f"diffusion.timesteps={d.timesteps} must be >= 2")
        if not 0 <= d.image_first_max_t <= d.timesteps:
            err.append(f"diffusion.image_first_max_t={d.image_first_max_t} must be in [0, diffusion.timesteps]")
        if not 0.0 <= d.condition_dropout < 1.0:
            err.append(f"diffusion.condition_dropout={d.condition_dropout} must be in [0, 1)")
    return err


def _io_errors(cfg: Config) -> List[str]:
    err = []
    ranges = sorted((lo_hi, name) for name, lo_hi in cfg.data.modality_token_ranges.items())
    for lo_hi, name in ranges:
        if name not in cfg.model.modalities:
            err.append(f"data.modality_token_ranges: unknown modality {name!r}; "
                       f"model.modalities is {cfg.model.modalities}")
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] < lo_hi[1] <= cfg.model.vocab_size:
            err.append(f"data.modality_token_ranges.{name}={lo_hi} must be [first, end) with "
                       f"0 <= first < end <= model.vocab_size={cfg.model.vocab_size}")
    for (a, na), (b, nb) in zip(ranges, ranges[1:]):
        if len(a) == 2 and len(b) == 2 and b[0] < a[1]:
            err.append(f"data.modality_token_ranges: {na} {a} and {nb} {b} overlap")
    from ..data.blend import parse_blend  # imported here: the data package imports the config package
    for key in ("path", "valid_path"):
        value = getattr(cfg.data, key)
        if value is not None:
            try:
                parse_blend(value, f"data.{key}")
            except ValueError as e:
                err.append(str(e))
    if not 0.0 <= cfg.data.valid_fraction < 1.0:
        err.append(f"data.valid_fraction={cfg.data.valid_fraction} must be in [0, 1)")
    if cfg.train.eval_interval < 0 or cfg.train.eval_iters < 0:
        err.append("train.eval_interval and train.eval_iters must be >= 0")
    if cfg.data.num_workers < 1 or cfg.data.prefetch < 1:
        err.append("data.num_workers and data.prefetch must be >= 1")
    for name in cfg.data.atomic_modalities or []:
        if name not in cfg.model.modalities:
            err.append(f"data.atomic_modalities: unknown modality {name!r}; model.modalities is {cfg.model.modalities}")
    if cfg.checkpoint.interval < 0 or cfg.checkpoint.keep_last < 0:
        err.append("checkpoint.interval and checkpoint.keep_last must be >= 0")
    if cfg.logging.interval <= 0:
        err.append(f"logging.interval={cfg.logging.interval} must be positive")
    if cfg.logging.peak_tflops is not None and cfg.logging.peak_tflops <= 0:
        err.append(f"logging.peak_tflops={cfg.logging.peak_tflops} must be positive")
    if not cfg.run.output_dir:
        err.append("run.output_dir is empty; give a directory for the run's files")
    return err


def _batch_errors(cfg: Config, world_size: int) -> List[str]:
    p, t = cfg.parallel, cfg.train
    dp = world_size // (p.tensor_parallel * p.pipeline_parallel)
    if dp < 1 or t.micro_batch_size <= 0:
        return []
    gbs = t.global_batch_size if t.global_batch_size is not None else t.micro_batch_size * dp
    per_step = t.micro_batch_size * dp
    if gbs % per_step:
        return [f"train.global_batch_size={gbs} is not a multiple of train.micro_batch_size * DP = "
                f"{t.micro_batch_size} * {dp} = {per_step}; use a multiple such as {per_step * max(1, gbs // per_step)}"]
    return []


def validate(cfg: Config, world_size: Optional[int] = None) -> Optional[ParallelLayout]:
    """Raise ConfigError listing every problem; return the ParallelLayout when `world_size` is given."""
    errors = _model_errors(cfg) + _parallel_errors(cfg, world_size) + _train_errors(cfg) + _io_errors(cfg) + \
        _continuous_errors(cfg)
    if world_size is not None and not any(e.startswith("world size") for e in errors):
        errors += _batch_errors(cfg, world_size)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
    return ParallelLayout.from_config(cfg, world_size) if world_size is not None else None
