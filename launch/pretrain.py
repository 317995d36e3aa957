"""Pretrain an MoT model.

    deepspeed --num_gpus 2 launch/pretrain.py --config configs/demo_cpu.yaml [key=value ...]
    torchrun --nproc_per_node 8 launch/pretrain.py --config configs/mot_7b_chameleon.yaml
    srun python launch/pretrain.py --config ...   |   mpirun -np 8 python launch/pretrain.py --config ...
    python launch/pretrain.py --config ...        (one process)

Writes <run.output_dir>/: config.yaml, deepspeed_config.json, metrics.jsonl, tensorboard/, checkpoints/.
Resumes from the latest checkpoint there (checkpoint.resume=auto); SIGTERM checkpoints and exits.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.config import ConfigError, load_config, validate  # noqa: E402
from mot_parallel.distributed import detect_launch_env  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML config (may inherit with base:)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by deepspeed
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=10")
    args = ap.parse_args(argv)
    env = detect_launch_env(argv=sys.argv)
    try:  # everything checkable is checked before a process group exists
        cfg = load_config(args.config, args.overrides)
        validate(cfg, world_size=env.world_size)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    from mot_parallel.training import Trainer
    Trainer(cfg, env).train()


if __name__ == "__main__":
    main()
