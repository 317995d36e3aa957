"""Pretrain an MoT model.

    deepspeed --num_gpus 2 launch/pretrain.py --config configs/demo_cpu.yaml [key=value ...]
    torchrun --nproc_per_node 8 launch/pretrain.py --config configs/mot_7b_chameleon.yaml
    srun python launch/pretrain.py --config ...        |   python launch/pretrain.py --config ... (1 process)

Foundation stage: validates the config against the launched world, starts torch.distributed, builds the
parallel topology and writes the resolved config to the run directory.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.config import ConfigError, dump_config, load_config, validate  # noqa: E402
from mot_parallel.distributed import Dims, ParallelTopology, detect_launch_env, init_distributed  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML config (may inherit with base:)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=10")
    args = ap.parse_args(argv)
    env = detect_launch_env(argv=sys.argv)
    try:  # everything checkable is checked before a process group exists
        cfg = load_config(args.config, args.overrides)
        layout = validate(cfg, world_size=env.world_size)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    ctx = init_distributed(env)
    topo = ParallelTopology.build(Dims(layout.tp, layout.pp, layout.dp))
    if ctx.is_main:
        dump_config(cfg, os.path.join(cfg.run.output_dir, "config.yaml"))
        print(f"[mot_parallel] {env.launcher}: world {ctx.world_size} on {ctx.device} ({ctx.backend}) -> "
              f"TP={layout.tp} PP={layout.pp} DP={layout.dp}, grad accumulation {layout.grad_accum}; "
              f"resolved config in {cfg.run.output_dir}/config.yaml", flush=True)
    print(f"[mot_parallel] rank {ctx.rank}: {topo}", flush=True)


if __name__ == "__main__":
    main()
