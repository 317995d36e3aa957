"""Config validation and the derived parallel layout; runs before any process group exists.

`validate(cfg, world_size)` collects every problem and raises one `ConfigError` listing them all,
each naming the dotted key, the offending value and the fix; with a world size it returns the run's
`ParallelLayout` (layout.py), derived here once, and checks the free-form `deepspeed:` keys against it.
Checks that need files (the corpus, checkpoint.resume) are the preflight's (mot_parallel/preflight.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple

from .blend_spec import parse_blend
from .parallel_layout import ParallelLayout, effective_sequence_parallel
from .yaml_io import ConfigError
from .continuous_checks import continuous_errors
from .deepspeed_checkpoint_keys import deepspeed_checkpoint_errors
from .deepspeed_checks import deepspeed_conflicts
from .deepspeed_schema import deepspeed_schema_errors
from .schema import DEMO_CORPUS, UNTIE_PARTS, Config


def _divisors(n: int, up_to: int = 4096) -> List[int]:
    """Divisors of n up to `up_to` (suggestions only; bounded so a huge value cannot stall validation)."""
    return [d for d in range(1, min(n, up_to) + 1) if n % d == 0]


def ffn_hidden_size(cfg: Config) -> int:
    m = cfg.model
    return m.ffn_hidden_size if m.ffn_hidden_size is not None else -(-(8 * m.hidden_size // 3) // 128) * 128


def num_kv_heads(cfg: Config) -> int:
    return cfg.model.num_kv_heads if cfg.model.num_kv_heads is not None else cfg.model.num_heads


INT64_MAX = 2 ** 63 - 1
MAX_SEQ_LEN = 2 ** 22  # 4M tokens: beyond any trained context, yet a 10**12 would pass the int64 check
MAX_VOCAB = 2 ** 31 - 1  # tokens are stored as int32 from 65,500 ids up (data/indexed.py token_dtype)


def _number_errors(value: Any, key: str) -> List[str]:
    """NaN/inf in any float (the typed keys and the free-form `deepspeed:` mapping alike; torch would fail
    deep inside, or train on NaN) and integers beyond int64 (numpy/torch cannot hold them)."""
    if dataclasses.is_dataclass(value):
        return [e for f in dataclasses.fields(value) for e in _number_errors(getattr(value, f.name),
                                                                             f"{key}.{f.name}" if key else f.name)]
    if isinstance(value, dict):
        return [e for k, v in value.items() for e in _number_errors(v, f"{key}.{k}")]
    if isinstance(value, (list, tuple)):
        return [e for i, v in enumerate(value) for e in _number_errors(v, f"{key}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{key}={value} is not a finite number; give a real value"]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        return [f"{key}={value} is too large (beyond a 64-bit integer)"]
    return []


def _model_errors(cfg: Config) -> List[str]:
    m, tp, err = cfg.model, cfg.parallel.tensor_parallel, []
    for key in ("hidden_size", "num_layers", "num_heads", "vocab_size", "max_seq_len", "make_vocab_size_divisible_by"):
        if getattr(m, key) <= 0:
            err.append(f"model.{key}={getattr(m, key)} must be positive")
    if err:
        return err
    if m.max_seq_len < 2:
        err.append(f"model.max_seq_len={m.max_seq_len} leaves no next-token target in a sequence (every token's "
                   "target is the next one); use at least 2 (typically 2048-8192)")
    elif m.max_seq_len > MAX_SEQ_LEN:
        err.append(f"model.max_seq_len={m.max_seq_len} exceeds {MAX_SEQ_LEN} tokens per sequence (every micro-batch "
                   "holds micro_batch_size x max_seq_len tokens); typical values are 2048-131072")
    if m.vocab_size > MAX_VOCAB:
        err.append(f"model.vocab_size={m.vocab_size} exceeds {MAX_VOCAB}, the largest id an int32 corpus holds")
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
    if effective_sequence_parallel(p.sequence_parallel, p.tensor_parallel) and m.max_seq_len % p.tensor_parallel:
        err.append(f"parallel.sequence_parallel needs model.max_seq_len={m.max_seq_len} divisible by "
                   f"parallel.tensor_parallel={p.tensor_parallel}")
    if world_size is not None:
        mp = p.tensor_parallel * p.pipeline_parallel
        if world_size < 1:
            err.append(f"world size {world_size} must be >= 1")
        elif world_size % mp:
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
    if not 0 <= t.seed < 2 ** 32:
        err.append(f"train.seed={t.seed} must be in [0, 2**32) (numpy's seed range)")
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
    path, valid = cfg.data.path, cfg.data.valid_path
    blends = [("valid_path", valid)] if valid not in (None, DEMO_CORPUS) else []
    if path is None or (isinstance(path, str) and not path.strip()):
        err.append(f"data.path is empty (an unset variable in a job script?); give a corpus prefix or a blend, or "
                   f"data.path={DEMO_CORPUS} for the offline demo corpus")
    elif path != DEMO_CORPUS:
        blends.insert(0, ("path", path))
    if valid == DEMO_CORPUS:
        err.append(f"data.valid_path={DEMO_CORPUS}: the demo corpus is a training corpus (data.path={DEMO_CORPUS}); "
                   "validate on a held-out part of it with data.valid_fraction")
    for key, value in blends:
        try:
            parse_blend(value, f"data.{key}")
        except ValueError as e:
            err.append(str(e))
    if not 0.0 <= cfg.data.valid_fraction < 1.0:
        err.append(f"data.valid_fraction={cfg.data.valid_fraction} must be in [0, 1)")
    if cfg.data.valid_path is not None and cfg.data.valid_fraction > 0:  # else one is silently ignored
        err.append("data.valid_path and data.valid_fraction are both set: validation is either its own corpus "
                   "or a held-out fraction of data.path; unset one")
    if cfg.train.eval_interval < 0 or cfg.train.eval_iters < 0:
        err.append("train.eval_interval and train.eval_iters must be >= 0")
    if cfg.data.num_workers < 1 or cfg.data.prefetch < 1:
        err.append("data.num_workers and data.prefetch must be >= 1")
    if cfg.data.demo_documents < 1:
        err.append(f"data.demo_documents={cfg.data.demo_documents} must be >= 1 (documents in the demo corpus)")
    if not cfg.checkpoint.resume.strip():
        err.append("checkpoint.resume is empty; use auto, none, or a checkpoint directory")
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


def _key_of(error: str) -> str:
    """'train.optimizer.betas[0]=nan ...' -> 'train.optimizer.betas'."""
    return error.split("=", 1)[0].split("[", 1)[0]


def validate(cfg: Config, world_size: Optional[int] = None) -> Optional[ParallelLayout]:
    """Raise ConfigError listing every problem; return the ParallelLayout when `world_size` is given."""
    numbers = _number_errors(cfg, "")
    bad_keys = {_key_of(e) for e in numbers}
    errors = _model_errors(cfg) + _parallel_errors(cfg, world_size) + _train_errors(cfg) + _io_errors(cfg) + \
        continuous_errors(cfg) + deepspeed_checkpoint_errors(cfg)
    if world_size is not None and not any(e.startswith("world size") for e in errors):
        errors += _batch_errors(cfg, world_size)
    errors = [e for e in errors if _key_of(e) not in bad_keys]  # a NaN fails range checks too: name it once
    layout = None
    if not errors:  # the layout is sound (a NaN elsewhere does not change it)
        layout = ParallelLayout.from_config(cfg, world_size) if world_size is not None else None
        errors = [e for e in deepspeed_conflicts(cfg, layout) if _key_of(e) not in bad_keys]
    named = bad_keys | {_key_of(e) for e in errors}  # DeepSpeed's own model: blocks not already named above
    errors += [e for e in deepspeed_schema_errors(cfg) if not any(k.startswith(e.split(":")[0]) for k in named)]
    errors = numbers + errors
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
    return layout
