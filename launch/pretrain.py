"""Pretrain an MoT model.

    deepspeed --num_gpus 2 launch/pretrain.py --config configs/demo_cpu.yaml [key=value ...]
    torchrun --nproc_per_node 8 launch/pretrain.py --config configs/mot_7b_chameleon.yaml
    srun python launch/pretrain.py --config ...   |   mpirun -np 8 python launch/pretrain.py --config ...
    python launch/pretrain.py --config ...        (one process)

Writes <run.output_dir>/: config.yaml, deepspeed_config.json, metrics.jsonl, tensorboard/, checkpoints/.
Resumes from the latest checkpoint there (checkpoint.resume=auto); SIGTERM or Ctrl-C (SIGINT) checkpoints
and exits (Ctrl-C twice: exits at once, unsaved), and so does the death of the launcher above the process. A rank that waits longer than
parallel.collective_timeout_s for the others exits with an error saying so.
Before any process group: the config is validated and the preflight checks the corpus (structure, fit,
every token id, cached per corpus) and checkpoint.resume; any problem is one `error:` message, exit 1.

    python launch/pretrain.py --config cfg.yaml --check      # validation + preflight only

    python launch/pretrain.py --config configs/mot_7b_chameleon.yaml --dry-run --world-size 256 --rank 17
builds rank 17's model on the meta device, checks shapes and sharding, and prints parameters and the
planner's memory estimate (no GPU, no process group; seconds).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.cli import int_in  # noqa: E402
from mot_parallel.config import ConfigError, load_config, validate  # noqa: E402
from mot_parallel.corpus_building import register_demo_corpora  # noqa: E402
from mot_parallel.distributed import detect_launch_env  # noqa: E402


def main(argv=None):
    try:
        run(argv)
    except KeyboardInterrupt:  # before training started, or Ctrl-C twice (once checkpoints and stops)
        print("error: interrupted (SIGINT) before a checkpoint could be written; the run's newest checkpoint is "
              "unchanged", file=sys.stderr)
        sys.exit(130)


def run(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML config (may inherit with base:)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by deepspeed
    ap.add_argument("--check", action="store_true",
                    help="validate the config and run the preflight (corpus, token ids, checkpoints), then exit")
    ap.add_argument("--dry-run", action="store_true",
                    help="build rank --rank of a --world-size layout on the meta device, check shapes, report")
    ap.add_argument("--world-size", type=int_in(1, 1 << 20), default=None, help="dry run: the world to plan for")
    ap.add_argument("--rank", type=int_in(0, 1 << 20), default=0, help="dry run: the rank to build")
    ap.add_argument("--all-ranks", action="store_true", help="dry run: check one rank per (stage, TP rank)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=10")
    args = ap.parse_args(argv)
    env = detect_launch_env(argv=sys.argv)
    register_demo_corpora()  # data.path: demo trains on a demo corpus, built on first use
    try:  # everything checkable is checked before a process group exists
        cfg = load_config(args.config, args.overrides)
        world = args.world_size or (env.world_size if not args.dry_run else
                                    cfg.parallel.tensor_parallel * cfg.parallel.pipeline_parallel)
        layout = validate(cfg, world_size=world)
        if args.dry_run and args.rank >= world:
            raise ConfigError(f"--rank {args.rank} is outside the world of {world} processes")
        if not args.dry_run:  # a dry run plans for a cluster: its corpus and checkpoints need not be here
            from mot_parallel.preflight import preflight
            preflight(cfg, layout, env.rank)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    if args.check:
        print(f"ok: {args.config} is valid for {layout.describe()} ({world} processes) and its files are usable")
        return
    if args.dry_run:
        from mot_parallel.training.dry_run import dry_run
        sys.exit(1 if dry_run(cfg, world, args.rank, args.all_ranks) else 0)
    from mot_parallel.data.indexed import DataError
    from mot_parallel.distributed.placement import log_placement
    from mot_parallel.training import Trainer
    from mot_parallel.training.checkpoint_files import CheckpointError
    from mot_parallel.training.supervision import collective_timeout_message, is_collective_timeout
    try:  # what can still go wrong is named too (a file changed since the preflight, a failed save)
        trainer = Trainer(cfg, env)
        log_placement(trainer.topo)  # the job's log: which node ran which rank, TP groups inside a node
        trainer.train()
    except (CheckpointError, DataError, ConfigError) as e:
        sys.exit(f"error: {e}")
    except RuntimeError as e:  # a peer that stopped answering: say so, and which key bounds the wait
        if not is_collective_timeout(e):
            raise
        sys.exit("error: " + collective_timeout_message(e, cfg.parallel.collective_timeout_s, env.rank))


if __name__ == "__main__":
    main()
