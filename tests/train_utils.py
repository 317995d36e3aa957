"""Helpers for training tests: a tiny config on the demo corpus, and a body that trains it on gloo ranks."""
import json
import os

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
        "model.ffn_hidden_size=64", "model.vocab_size=512", "model.make_vocab_size_divisible_by=64",
        "model.max_seq_len=64", "model.qk_norm=true", "model.modalities=[text,image,speech]",
        "train.micro_batch_size=2", "train.global_batch_size=4", "train.steps=8", "train.precision=fp32",
        "train.optimizer.lr=1e-2", "train.lr_schedule.warmup_steps=2", "logging.interval=1",
        "logging.tensorboard=false", "checkpoint.interval=0", "data.demo_documents=300", "data.prefetch=1"]


def losses(run_dir, kind="train"):
    """{step: record} of the training records (kind="valid": of the evaluations)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if r.get("kind", "train") == kind}


def train_body(overrides):
    """Train on the ranks the harness started; rank 0 returns {step: metrics record}."""
    import torch.distributed as dist
    from mot_parallel.config import load_config
    from mot_parallel.training import Trainer
    cfg = load_config(None, TINY + list(overrides))
    Trainer(cfg).train()
    dist.barrier()
    return losses(cfg.run.output_dir) if dist.get_rank() == 0 else None


def train_config_body(config, overrides):
    """Train `config` (a YAML path) with `overrides` on the harness's ranks; rank 0 returns its run directory."""
    import torch.distributed as dist
    from mot_parallel.config import load_config
    from mot_parallel.training import Trainer
    cfg = load_config(config, list(overrides))
    Trainer(cfg).train()
    dist.barrier()
    return cfg.run.output_dir if dist.get_rank() == 0 else None
