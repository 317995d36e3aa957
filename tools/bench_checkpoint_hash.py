"""What the checkpoints' content hashes cost: SHA-256 throughput on this machine, and the seconds they add to a
save and to a resume per rank at each config's checkpoint size (the planner's count of DeepSpeed's files).

    python tools/bench_checkpoint_hash.py [--config configs/mot_7b_*.yaml ...] [--world-size 256]
                                          [--sample-mib 1024] [--dir <a directory on the checkpoint filesystem>]
                                          [--json]

In --dir it writes one sample file of --sample-mib (torch.save of fp32 tensors, then fsync), times that,
and times hashing it right after, from the page cache, as the writing rank does in a save
(training/checkpoint_hashes.py); then it removes the file. Per config and layout:
  save    the most one rank writes (DP rank 0: the model states of its TP rank and stage, plus its
          optimizer shard), hashed at the measured rate, and the ratio to writing those bytes;
  resume  the largest share of the whole checkpoint when every rank verifies an equal share, largest
          files first (a file read cold from a parallel filesystem hashes no faster than it reads).
"""
import argparse
import glob
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.cli import int_in, user_errors  # noqa: E402
from mot_parallel.config import load_config, validate  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GB = 1e9


def measure(directory: str, mib: int) -> dict:
    """Write rate and SHA-256 rate (bytes/s) of one sample checkpoint file in `directory`."""
    import torch

    from mot_parallel.training.checkpoint_hashes import sha256_file
    tensors = {f"w{i}": torch.randn(16 * 2**20 // 4) for i in range(max(1, mib // 16))}
    fd, path = tempfile.mkstemp(prefix=".bench_checkpoint_hash.", suffix=".pt", dir=directory)
    os.close(fd)
    try:
        t = time.perf_counter()
        with open(path, "wb") as f:
            torch.save(tensors, f)
            f.flush()
            os.fsync(f.fileno())
        write_s = time.perf_counter() - t
        size = os.path.getsize(path)
        t = time.perf_counter()
        sha256_file(path)
        hash_s = time.perf_counter() - t
    finally:
        os.remove(path)
    return {"sample_bytes": size, "write_Bps": size / write_s, "sha256_Bps": size / hash_s}


def costs(config: str, world: int, rates: dict) -> dict:
    from mot_parallel.model import ModelSettings
    from mot_parallel.model.settings import DTYPES
    from mot_parallel.studies.benchmarks.checkpoint_sizes import checkpoint_files
    from mot_parallel.training.checkpoint_hashes import assign
    cfg = load_config(config, [])
    layout = validate(cfg, world)
    precision = cfg.train.precision if cfg.train.precision != "auto" else "bf16"
    files = checkpoint_files(ModelSettings.from_config(cfg), layout, DTYPES[precision].itemsize)
    sizes = files.sizes()
    shares = [0] * world
    for rel, rank in assign(sizes, world).items():
        shares[rank] += sizes[rel]
    written, share = files.written_by_one_rank, max(shares)
    return {"config": os.path.relpath(config, ROOT), "layout": layout.describe(), "checkpoint_GB": files.total / GB,
            "written_by_one_rank_GB": written / GB, "resume_share_GB": share / GB,
            "hash_s_per_save": written / rates["sha256_Bps"], "write_s_per_save": written / rates["write_Bps"],
            "hash_s_per_resume": share / rates["sha256_Bps"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", default=sorted(glob.glob(os.path.join(ROOT, "configs", "mot_7b_*.yaml"))))
    ap.add_argument("--world-size", type=int_in(1, 1 << 20), default=256,
                    help="GPUs (the 7B configs are laid out for 256)")
    ap.add_argument("--sample-mib", type=int_in(1, 1 << 16), default=1024, help="size of the sample file measured")
    ap.add_argument("--dir", default=None, help="where to write the sample (default: the system's temp directory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    directory = args.dir or tempfile.gettempdir()
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        sys.exit(f"error: --dir {directory}: not a writable directory")
    with user_errors():
        rows = [costs(c, args.world_size, {"sha256_Bps": 1.0, "write_Bps": 1.0}) for c in args.config]  # checks first
        rates = measure(directory, args.sample_mib)
        rows = [costs(c, args.world_size, rates) for c in args.config]
    if args.json:
        print(json.dumps({"rates": rates, "rows": rows}, indent=1))
        return
    print(f"sample {rates['sample_bytes'] / 2**20:.0f} MiB in {directory}: write + fsync {rates['write_Bps'] / GB:.2f} "
          f"GB/s, SHA-256 from the page cache {rates['sha256_Bps'] / GB:.2f} GB/s (one core)")
    print(f"{'config':38} {'layout':34} {'ckpt GB':>8} {'rank GB':>8} {'hash s/save':>11} {'write s':>8} "
          f"{'hash/write':>10} {'share GB':>8} {'hash s/resume':>13}")
    for r in rows:
        print(f"{r['config']:38} {r['layout'][:34]:34} {r['checkpoint_GB']:8.1f} {r['written_by_one_rank_GB']:8.2f} "
              f"{r['hash_s_per_save']:11.1f} {r['write_s_per_save']:8.1f} "
              f"{r['hash_s_per_save'] / r['write_s_per_save']:10.2f} {r['resume_share_GB']:8.2f} "
              f"{r['hash_s_per_resume']:13.1f}")


if __name__ == "__main__":
    main()
