"""Convert checkpoints: Hugging Face upcycling, resharding across TP/PP layouts, single-file export.

    # a HF Llama or Qwen2 model -> MoT (every modality starts as a copy of the dense weights)
    python tools/convert_checkpoint.py hf-to-mot --hf llama_dir --out mot_start --modalities text image
    # then train from it:  launch/pretrain.py --config ... checkpoint.resume=mot_start
    # the way back: one modality's copy (universal or export) -> a HF Llama/Qwen2 checkpoint
    python tools/convert_checkpoint.py to-hf --universal u --modality text --out hf_text [--dtype bf16]

    # a training checkpoint (DeepSpeed, any layout) -> universal (layout-independent)
    python tools/convert_checkpoint.py to-universal --config cfg.yaml --checkpoint runs/x/checkpoints --out u
    # universal -> a DeepSpeed checkpoint of another layout (in <run.output_dir>/checkpoints)
    python tools/convert_checkpoint.py from-universal --config cfg.yaml --universal u parallel.tensor_parallel=1
    # both at once (a run does this itself when it resumes a checkpoint of another layout, in parallel on
    # its own ranks: checkpoint.reshard_on_resume=auto, the default; this is for doing it ahead of time)
    python tools/convert_checkpoint.py reshard --config cfg.yaml --checkpoint runs/x/checkpoints \
        --src parallel.tensor_parallel=2 parallel.pipeline_parallel=2 --dst parallel.tensor_parallel=1 \
        --run-dir runs/x_tp1
    # universal -> one safetensors file + config, for inference/evaluation elsewhere
    python tools/convert_checkpoint.py export --universal u --out exported [--dtype bf16]
    # universal -> a start for a Megatron-Core script using MoTGPTModel (mot_parallel.megatron)
    python tools/convert_checkpoint.py to-megatron --universal u --out megatron_start

to-universal / from-universal run on the layout's world: under a launcher (deepspeed / torchrun /
srun) they use its processes; otherwise they start --nproc local CPU processes (to-universal: the world
that wrote the checkpoint, from its manifest; from-universal: TP x PP).
Then load in Python:  model = mot_parallel.load_pretrained("exported"); logits = model(tokens, modality_ids)

to-megatron writes <out>/model.safetensors (every weight, unsharded, fp32, under the parameter names of a
TP=1, PP=1 MoTGPTModel: decoder.layers.<i>.<param>.<modality>, decoder.final_layernorm.weight, ...) and
<out>/megatron.json (the TransformerConfig fields, MoTOptions and MoTGPTModel arguments of that model).
In a Megatron script:
    setup = mot_parallel.megatron.megatron_setup("megatron_start")
    config = TransformerConfig(**setup.config_kwargs(), tensor_model_parallel_size=..., ...)
    model = MoTGPTModel(config, get_mot_layer_spec(setup.options), **setup.model, mot=setup.options)
    mot_parallel.megatron.load_into_megatron(model, "megatron_start")   # this rank's TP/PP shards
(at TP=1, PP=1 plain `model.load_state_dict(safetensors.torch.load_file(".../model.safetensors"))` does).
Why this and not a Megatron distributed checkpoint: Megatron-Core's checkpoint writer needs CUDA, and a
conversion should run anywhere (a login node, CI); unsharded tensors under Megatron's own names serve
every TP/PP layout and any tool that reads safetensors (nothing is unpickled), and the JSON removes the
other hand mapping, the TransformerConfig. On GPUs, `dist_checkpointing.save(model.sharded_state_dict(),
dir)` after loading gives the native, layout-independent checkpoint. The reverse (a trained MoTGPTModel
-> universal, for export/resharding/HF tools) is `mot_parallel.megatron.megatron_to_universal(model, dir)`,
called on every rank from the training script.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.cli import add_overwrite, checked_config, existing_path, int_in, user_errors  # noqa: E402
from mot_parallel.config import load_config_or_exit  # noqa: E402
from mot_parallel.outputs import EXPORT, HF, MEGATRON, UNIVERSAL, OutputError, check_dir, fresh_dir  # noqa: E402

RESHARD, SCRATCH = "reshard run directory", "export scratch run"  # output marks (mot_parallel/outputs.py)
INPUT_ERRORS = {"ConfigError", "ConversionError", "DataError", "CheckpointError", "OutputError"}
DTYPE_NAMES = ["bf16", "fp16", "fp32"]  # mot_parallel.model.settings.DTYPES (not imported: torch loads slowly)


def _scratch(out):
    """An export reads only: its run directory is a scratch one next to the output, marked, removed afterwards."""
    return f"{out}.export-run"


def _with_trainer(config, overrides, action, arg):
    """Build the trainer on this world (it loads the checkpoint named by checkpoint.resume) and act."""
    import torch.distributed as dist
    from mot_parallel.config import load_config
    from mot_parallel.outputs import claim_scratch, remove_scratch
    from mot_parallel.training import Trainer
    scratch = _scratch(arg) if action == "export" else None
    cfg = load_config(config, list(overrides) + ([f"run.output_dir={scratch}"] if scratch else []))
    if scratch:  # one rank claims it: concurrent claims raced (one rank saw another's directory before its mark)
        if dist.get_rank() == 0:
            claim_scratch(scratch, SCRATCH)
        dist.barrier()
    trainer = Trainer(cfg)
    try:
        if action == "export":
            trainer.export_universal(arg)
        else:
            trainer.save()
    finally:
        trainer.loader.close()
    dist.barrier()
    if scratch and dist.get_rank() == 0:
        remove_scratch(scratch, SCRATCH)
    return trainer.step


def _source_layout(checkpoint, src):
    """--src overrides and process count for a checkpoint: given, or read from its manifest."""
    from mot_parallel.training.checkpoint_files import layout_overrides, read_manifest, step_dirs
    if src:
        return src, None
    step = os.path.abspath(checkpoint)
    if not os.path.basename(step).startswith("step_"):
        steps = step_dirs(step)
        if not steps:
            sys.exit(f"error: {checkpoint}: no step_* checkpoint inside; give --src with its layout")
        step = os.path.join(step, steps[-1][1])
    try:
        rec = read_manifest(step)["layout"]
    except (OSError, ValueError, KeyError):
        sys.exit(f"error: {step}: no readable checkpoint.json; give --src with the layout that wrote it")
    return layout_overrides(rec).split(), rec["tp"] * rec["pp"] * rec["dp"]


def _run(config, overrides, action, arg, nproc, source):
    """Run `action` on the layout's world; `source` = (flag, path) of the checkpoint it reads."""
    from mot_parallel.distributed import detect_launch_env
    env = detect_launch_env(resolve_mpi_master=False)
    cfg, _ = checked_config(config, overrides)
    launched = env.launcher != "none"  # started by a launcher: its world
    n = env.world_size if launched else nproc or cfg.parallel.tensor_parallel * cfg.parallel.pipeline_parallel
    scratch = [f"run.output_dir={_scratch(arg)}"] if action == "export" else []
    cfg, layout = checked_config(config, list(overrides) + scratch, world=n)
    with user_errors():  # the checkpoint to read is usable: checked before any process starts
        from mot_parallel.outputs import check_dir, refuse_overlap
        from mot_parallel.training.checkpoint_files import step_dirs
        from mot_parallel.training.resume import checkpoint_dir, resolve_resume
        if action == "save":  # the target run must be new: one with checkpoints would resume those instead
            target = checkpoint_dir(cfg)
            refuse_overlap("checkpoint.dir", target, [source])
            if step_dirs(target):
                raise OutputError(f"{target} already holds checkpoints: the run would resume them instead of "
                                  f"{source[1]}; give a new run.output_dir (or checkpoint.dir)")
        else:
            check_dir("--out", _scratch(arg), SCRATCH, [source], overwrite=True)
        from mot_parallel.corpus_building import register_demo_corpora
        from mot_parallel.data.from_config import check_data
        register_demo_corpora()  # data.path: demo (the trainer's workers register their own)
        check_data(cfg, full=False)  # the trainer opens the config's corpus: one it cannot open is named here
        resolve_resume(cfg, layout)
    if launched:
        return _with_trainer(config, overrides, action, arg)
    from mot_parallel.outputs import remove_scratch
    from mot_parallel.testing import DistributedTestError, run_distributed
    try:
        return run_distributed(_with_trainer, n, args=(config, overrides, action, arg), timeout=24 * 3600)[0]
    except DistributedTestError as e:  # an input error met on a worker is one line; a bug keeps its traceback
        said = [line for line in str(e).splitlines() if line.split(":")[0].rsplit(".", 1)[-1] in INPUT_ERRORS]
        if not said:
            raise
        sys.exit(f"error: {action} on {n} worker process(es) failed: {said[-1].split(': ', 1)[-1]}")
    finally:
        if action == "export":
            remove_scratch(_scratch(arg), SCRATCH)


def _check_output(args):
    """Where the subcommand writes is new (or an earlier output of its own, with --overwrite), and is not, does
    not contain and does not lie inside what it reads (mot_parallel/outputs.py); before any work."""
    inputs = [(f"--{k}", getattr(args, k, None)) for k in ("hf", "checkpoint", "universal", "config")]
    if args.cmd == "reshard":
        check_dir("--run-dir", args.run_dir, RESHARD, inputs, args.overwrite)
    elif args.cmd != "from-universal":
        kind = {"hf-to-mot": UNIVERSAL, "to-universal": UNIVERSAL, "to-hf": HF, "export": EXPORT,
                "to-megatron": MEGATRON}[args.cmd]
        check_dir("--out", args.out, kind, inputs, args.overwrite)


def _hugging_face(args) -> str:
    from mot_parallel.convert import export_to_hf, hf_to_universal
    if args.cmd == "to-hf":
        return f"wrote {export_to_hf(args.universal, args.modality, args.out, args.dtype)} ({args.modality}'s copy)"
    s = hf_to_universal(args.hf, args.out, args.modalities, args.config, args.overrides)
    return f"wrote {args.out}: {s.num_layers} layers, modalities {list(s.modalities)} (shared start)"


def _export(universal, out, dtype):
    from mot_parallel.convert import export_universal
    from mot_parallel.convert.universal import is_universal
    if not is_universal(universal):
        sys.exit(f"error: {universal}: not a universal checkpoint (no universal.json); make one with to-universal")
    return export_universal(universal, out, dtype)


def _parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hf-to-mot")
    h.add_argument("--hf", required=True, type=existing_path)
    h.add_argument("--out", required=True)
    h.add_argument("--modalities", nargs="+", required=True)
    h.add_argument("--config", default=None, help="base config for everything the HF config does not set")
    h.add_argument("overrides", nargs="*")
    t = sub.add_parser("to-universal")
    t.add_argument("--config", required=True)
    t.add_argument("--checkpoint", required=True, type=existing_path,
                   help="a run's checkpoint directory (or one step_* inside it)")
    t.add_argument("--out", required=True)
    t.add_argument("--nproc", type=int_in(1, 4096), default=None)
    t.add_argument("overrides", nargs="*")
    f = sub.add_parser("from-universal")
    f.add_argument("--config", required=True)
    f.add_argument("--universal", required=True, type=existing_path)
    f.add_argument("--nproc", type=int_in(1, 4096), default=None)
    f.add_argument("overrides", nargs="*")
    r = sub.add_parser("reshard")
    r.add_argument("--config", required=True)
    r.add_argument("--checkpoint", required=True, type=existing_path)
    r.add_argument("--src", nargs="*", default=[],
                   help="overrides giving the checkpoint's layout (default: read from its checkpoint.json)")
    r.add_argument("--dst", nargs="*", default=[], help="overrides giving the target layout")
    r.add_argument("--run-dir", required=True, help="where the target layout's run and checkpoint go")
    b = sub.add_parser("to-hf")
    b.add_argument("--universal", required=True, type=existing_path,
                   help="a universal checkpoint or a single-file export")
    b.add_argument("--modality", required=True, help="whose copy of the untied parts to export")
    b.add_argument("--out", required=True)
    b.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32")
    e = sub.add_parser("export")
    e.add_argument("--universal", required=True, type=existing_path)
    e.add_argument("--out", required=True)
    e.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32")
    m = sub.add_parser("to-megatron")
    m.add_argument("--universal", required=True, type=existing_path)
    m.add_argument("--out", required=True)
    for writer in (h, t, r, b, e, m):
        add_overwrite(writer)
    return ap


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.cmd == "hf-to-mot":  # `--modalities a b key=value` hands argparse the overrides too (no name has '=')
        args.overrides = [m for m in args.modalities if "=" in m] + args.overrides
        args.modalities = [m for m in args.modalities if "=" not in m]
    with user_errors():
        _check_output(args)
    if args.cmd in ("to-universal", "from-universal") or (args.cmd == "hf-to-mot" and args.config):
        checked_config(args.config, args.overrides)  # the config and overrides, before any checkpoint file
    elif args.cmd == "hf-to-mot":  # the HF config completes these: only their keys and types can be checked now
        load_config_or_exit(None, args.overrides)
    if args.cmd in ("hf-to-mot", "to-hf"):
        with user_errors():
            print(_hugging_face(args))
    elif args.cmd == "to-universal":  # the checkpoint's own layout (its manifest), unless overrides say otherwise
        src, nproc = _source_layout(args.checkpoint, [o for o in args.overrides if o.startswith("parallel.")])
        step = _run(args.config, src + args.overrides + [f"checkpoint.resume={os.path.abspath(args.checkpoint)}"],
                    "export", os.path.abspath(args.out), args.nproc or nproc, ("--checkpoint", args.checkpoint))
        print(f"wrote {args.out} (step {step})")
    elif args.cmd == "from-universal":
        step = _run(args.config, args.overrides + [f"checkpoint.resume={os.path.abspath(args.universal)}"],
                    "save", None, args.nproc, ("--universal", args.universal))
        print(f"saved step {step} in the target layout's checkpoint directory")
    elif args.cmd == "reshard":
        _reshard(args)
    elif args.cmd == "to-megatron":
        from mot_parallel.megatron import write_megatron_checkpoint
        with user_errors():
            setup = write_megatron_checkpoint(args.universal, args.out)
        print(f"wrote {args.out}: {setup.config['num_layers']} layers, modalities {list(setup.options.modalities)}, "
              f"vocab_size={setup.model['vocab_size']} rows (megatron.json + model.safetensors)")
    else:
        with user_errors():
            print(f"wrote {_export(args.universal, args.out, args.dtype)}")


def _reshard(args):
    """Universal (in <run-dir>/universal), then the target layout's checkpoint (in <run-dir>/checkpoints)."""
    run_dir = os.path.abspath(args.run_dir)
    src, nproc = _source_layout(args.checkpoint, args.src)
    checked_config(args.config, src)
    checked_config(args.config, args.dst)
    with user_errors():
        fresh_dir(run_dir, RESHARD)  # an earlier reshard there (--overwrite, checked: ours) is removed first
    universal = os.path.join(run_dir, "universal")
    _run(args.config, src + [f"checkpoint.resume={os.path.abspath(args.checkpoint)}"], "export", universal, nproc,
         ("--checkpoint", args.checkpoint))
    step = _run(args.config, args.dst + [f"checkpoint.resume={universal}", f"run.output_dir={run_dir}"], "save", None,
                None, ("--checkpoint", args.checkpoint))
    print(f"resharded step {step} into {args.run_dir}/checkpoints (via {universal})")


if __name__ == "__main__":
    main()
