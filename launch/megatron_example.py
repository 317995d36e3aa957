"""Swap a Megatron-Core GPT's dense layer spec for MoT: a minimal Megatron training loop.

    torchrun --nproc_per_node 2 launch/megatron_example.py --tp 2 --steps 10     # CPU (gloo) or GPUs

In your own Megatron training script the change is three lines (marked "MoT" below):
    spec = get_gpt_layer_local_spec()                      # dense
    spec = get_mot_layer_spec(MoTOptions(modalities=...))  # MoT: per-modality QKV/O, FFN, norms
    model = MoTGPTModel(config, spec, vocab_size, seq_len, mot=options)   # instead of GPTModel
and forward_step builds the routing plan on the host from the batch's modality ids, before the ids
go to the device, and passes it to the model. The TransformerConfig must describe the MoT layer's math
(RMSNorm, SwiGLU = gated_linear_unit + silu, no linear biases; qk_layernorm turns the MoT QK-norm on):
anything else is refused by name when the model is built (mot_parallel/megatron/settings.py). To start
from a converted checkpoint instead of random weights, see `tools/convert_checkpoint.py to-megatron`. Everything else (forward_backward_func, optimizer,
finalize_model_grads / DDP, distributed checkpoints) stays Megatron's. This script uses the
mot_parallel data loader on the offline demo corpus and a torch AdamW, and reduces gradients itself
(TP-partial norm grads over TP, everything over DP), which Megatron's DDP + finalize_model_grads do
when the model is wrapped in them.
"""
import argparse
import json
import os
import sys
from functools import partial

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mot_parallel.cli import add_overwrite, int_in, user_errors  # noqa: E402
from mot_parallel.outputs import check_dir, mark  # noqa: E402

OUT_KIND = "megatron_example run"  # the output mark of --out


def cpu_forward_backward(*, forward_step_func, data_iterator, model, num_microbatches, forward_only=False,
                         **_unused):
    """What megatron.core's forward_backward_no_pipelining does, minus its CUDA-only token counter."""
    stats = []
    for _ in range(num_microbatches):
        output, loss_func = forward_step_func(data_iterator, model)
        loss, info = loss_func(output)
        if not forward_only:
            (loss / num_microbatches).backward()
        stats.append(info)
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tp", type=int_in(1, 64), default=1)
    ap.add_argument("--steps", type=int_in(1, 10 ** 6), default=10)
    ap.add_argument("--out", default="runs/megatron_example")
    add_overwrite(ap)
    args = ap.parse_args(argv)
    with user_errors():  # a new directory, or an earlier one of this example with --overwrite
        check_dir("--out", args.out, OUT_KIND, overwrite=args.overwrite)

    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer import TransformerConfig

    from mot_parallel.config import load_config
    from mot_parallel.data import LoaderSettings, MoTDataLoader
    from mot_parallel.corpus_building import register_demo_corpora
    from mot_parallel.data.from_config import open_corpus
    register_demo_corpora()  # data.path: demo: the demo corpus
    from mot_parallel.distributed import device as dev
    from mot_parallel.distributed import init_distributed
    from mot_parallel.megatron import MoTGPTModel, MoTOptions, get_mot_layer_spec          # MoT
    from mot_parallel.tensor_parallel import allreduce_tp_partial_grads, tp_partial_grad_params

    ctx = init_distributed(require_process_group=True)  # a rendezvous: every rank checked --out before any writes
    if ctx.rank == 0:
        os.makedirs(args.out, exist_ok=True)
        mark(args.out, OUT_KIND)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=args.tp)
    on_gpu = dev.is_accelerator(ctx.device)
    if on_gpu:
        from megatron.core import tensor_parallel
        tensor_parallel.model_parallel_cuda_manual_seed(1234)
    # MoT layers draw their init from options.seed, layout-independently; Megatron's CPU init of the
    # embedding and output layer draws the full master weight from torch's RNG, then slices it
    torch.manual_seed(1234)
    config = TransformerConfig(num_layers=2, hidden_size=128, num_attention_heads=4, ffn_hidden_size=352,
                               normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu,
                               add_bias_linear=False, qk_layernorm=True, tensor_model_parallel_size=args.tp,
                               use_cpu_initialization=not on_gpu, params_dtype=torch.float32,
                               hidden_dropout=0.0, attention_dropout=0.0)
    options = MoTOptions(modalities=("text", "image", "speech"))  # MoT (QK-norm follows qk_layernorm)
    model = MoTGPTModel(config, get_mot_layer_spec(options), vocab_size=512, max_sequence_length=128,  # MoT
                        mot=options).to(ctx.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)

    # data: the demo corpus, this DP rank's micro-batches, sequence-first [s, b] arrays from our loader
    cfg = load_config(None, ["model.modalities=[text,image,speech]", "model.vocab_size=512", "model.max_seq_len=128", f"run.output_dir={args.out}",
                             "data.demo_documents=2000"])
    if ctx.rank == 0:
        open_corpus(cfg)
    torch.distributed.barrier()
    dp = parallel_state.get_data_parallel_world_size()
    settings = LoaderSettings(seq_len=128, micro_batch_size=2, grad_accum=1, seed=1, dp_size=dp,
                              dp_rank=parallel_state.get_data_parallel_rank())
    loader = MoTDataLoader(open_corpus(cfg), settings)

    def loss_func(mask, output):
        loss = (output * mask).sum() / mask.sum().clamp(min=1)
        return loss, {"loss": loss.detach()}

    def forward_step(data_iterator, model):
        mb = next(data_iterator)
        plan = model.build_plan(mb.modality_ids.t(), mb.segment_ids.t(), ctx.device)      # host-side plan
        labels = mb.labels.t().to(ctx.device)
        mask = (labels != -100).float()
        output = model(mb.tokens.t().to(ctx.device), labels=labels.clamp(min=0), routing_plan=plan)
        return output, partial(loss_func, mask)

    # Megatron's schedules allocate their token counter on the CUDA device; on CPU the same
    # forward_step contract runs through the minimal no-pipelining loop below instead.
    forward_backward = get_forward_backward_func() if on_gpu else cpu_forward_backward
    losses = []
    for step in range(1, args.steps + 1):
        batch = next(loader)
        optimizer.zero_grad()
        out = forward_backward(forward_step_func=forward_step, data_iterator=iter(batch.micro_batches),
                               model=model, num_microbatches=len(batch.micro_batches), seq_length=128,
                               micro_batch_size=2, forward_only=False)
        # Megatron's DDP + finalize_model_grads do these two reductions when the model is wrapped in it
        allreduce_tp_partial_grads(tp_partial_grad_params(model), parallel_state.get_tensor_model_parallel_group())
        if dp > 1:
            for p in model.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad, group=parallel_state.get_data_parallel_group())
                    p.grad /= dp
        optimizer.step()
        loss = sum(o["loss"].item() for o in out) / len(out)
        losses.append(loss)
        if ctx.rank == 0:
            print(f"step {step} loss {loss:.4f}", flush=True)
    loader.close()
    if ctx.rank == 0:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "losses.json"), "w") as f:
            json.dump(losses, f)
    return losses


if __name__ == "__main__":
    main()
