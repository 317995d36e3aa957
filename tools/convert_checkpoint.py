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

from mot_parallel.cli import checked_config, existing_path, positive_int, user_errors  # noqa: E402
from mot_parallel.model.settings import DTYPES  # noqa: E402


def _with_trainer(config, overrides, action, arg):
    """Build the trainer on this world (it loads the checkpoint named by checkpoint.resume) and act.
    An export reads only: its run directory is a scratch one next to the output, removed afterwards."""
    import shutil
    import torch.distributed as dist
    from mot_parallel.config import load_config
    from mot_parallel.training import Trainer
    scratch = f"{arg}.export-run" if action == "export" else None
    cfg = load_config(config, list(overrides) + ([f"run.output_dir={scratch}"] if scratch else []))
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
        shutil.rmtree(scratch, ignore_errors=True)
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


def _run(config, overrides, action, arg, nproc):
    from mot_parallel.distributed import detect_launch_env
    env = detect_launch_env(resolve_mpi_master=False)
    cfg, _ = checked_config(config, overrides)
    launched = env.launcher != "none"  # started by a launcher: its world
    n = env.world_size if launched else nproc or cfg.parallel.tensor_parallel * cfg.parallel.pipeline_parallel
    scratch = [f"run.output_dir={arg}.export-run"] if action == "export" else []
    cfg, layout = checked_config(config, list(overrides) + scratch, world=n)
    with user_errors():  # the checkpoint to read is usable: checked before any process starts
        from mot_parallel.training.resume import resolve_resume
        resolve_resume(cfg, layout)
    if launched:
        return _with_trainer(config, overrides, action, arg)
    from mot_parallel.testing import run_distributed
    return run_distributed(_with_trainer, n, args=(config, overrides, action, arg), timeout=24 * 3600)[0]


def _hugging_face(args) -> str:
    from mot_parallel.convert import export_to_hf, hf_to_universal
    if args.cmd == "to-hf":
        return f"wrote {export_to_hf(args.universal, args.modality, args.out, args.dtype)} ({args.modality}'s copy)"
    # `--modalities a b key=value` hands argparse the overrides too: modality names never contain '='
    modalities = [m for m in args.modalities if "=" not in m]
    overrides = [m for m in args.modalities if "=" in m] + args.overrides
    s = hf_to_universal(args.hf, args.out, modalities, args.config, overrides)
    return f"wrote {args.out}: {s.num_layers} layers, modalities {list(s.modalities)} (shared start)"


def _export(universal, out, dtype):
    from mot_parallel.convert import export_universal
    from mot_parallel.convert.universal import is_universal
    if not is_universal(universal):
        sys.exit(f"error: {universal}: not a universal checkpoint (no universal.json); make one with to-universal")
    return export_universal(universal, out, dtype)


def main(argv=None):
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
    t.add_argument("--nproc", type=positive_int, default=None)
    t.add_argument("overrides", nargs="*")
    f = sub.add_parser("from-universal")
    f.add_argument("--config", required=True)
    f.add_argument("--universal", required=True, type=existing_path)
    f.add_argument("--nproc", type=positive_int, default=None)
    f.add_argument("overrides", nargs="*")
    r = sub.add_parser("reshard")
    r.add_argument("--config", required=True)
    r.add_argument("--checkpoint", required=True, type=existing_path)
    r.add_argument("--src", nargs="*", default=[],
                   help="overrides giving the checkpoint's layout (default: read from its checkpoint.json)")
    r.add_argument("--dst", nargs="*", default=[], help="overrides giving the target layout")
    r.add_argument("--run-dir", required=True, help="where the target layout's run and checkpoint go")
    b = sub.add_parser("to-hf")
    b.add_argument("--universal", required=True, help="a universal checkpoint or a single-file export")
    b.add_argument("--modality", required=True, help="whose copy of the untied parts to export")
    b.add_argument("--out", required=True)
    b.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    e = sub.add_parser("export")
    e.add_argument("--universal", required=True, type=existing_path)
    e.add_argument("--out", required=True)
    e.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    m = sub.add_parser("to-megatron")
    m.add_argument("--universal", required=True)
    m.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    if args.cmd in ("hf-to-mot", "to-hf"):
        if args.cmd == "hf-to-mot" and args.config:
            checked_config(args.config, args.overrides)
        with user_errors():
            print(_hugging_face(args))
    elif args.cmd == "to-universal":  # the checkpoint's own layout (its manifest), unless overrides say otherwise
        src, nproc = _source_layout(args.checkpoint, [o for o in args.overrides if o.startswith("parallel.")])
        step = _run(args.config, src + args.overrides + [f"checkpoint.resume={os.path.abspath(args.checkpoint)}"],
                    "export", os.path.abspath(args.out), args.nproc or nproc)
        print(f"wrote {args.out} (step {step})")
    elif args.cmd == "from-universal":
        step = _run(args.config, args.overrides + [f"checkpoint.resume={os.path.abspath(args.universal)}"],
                    "save", None, args.nproc)
        print(f"saved step {step} in the target layout's checkpoint directory")
    elif args.cmd == "reshard":
        universal = os.path.join(os.path.abspath(args.run_dir), "universal")
        src, nproc = _source_layout(args.checkpoint, args.src)
        _run(args.config, src + [f"checkpoint.resume={os.path.abspath(args.checkpoint)}"], "export",
             universal, nproc)
        step = _run(args.config, args.dst + [f"checkpoint.resume={universal}",
                                             f"run.output_dir={os.path.abspath(args.run_dir)}"], "save", None, None)
        print(f"resharded step {step} into {args.run_dir}/checkpoints (via {universal})")
    elif args.cmd == "to-megatron":
        from mot_parallel.megatron import write_megatron_checkpoint
        setup = write_megatron_checkpoint(args.universal, args.out)
        print(f"wrote {args.out}: {setup.config['num_layers']} layers, modalities {list(setup.options.modalities)}, "
              f"vocab_size={setup.model['vocab_size']} rows (megatron.json + model.safetensors)")
    else:
        print(f"wrote {_export(args.universal, args.out, args.dtype)}")


if __name__ == "__main__":
    main()
