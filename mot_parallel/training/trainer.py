"""The training loop on a DeepSpeed engine.

Set-up, in order (each step needs the previous one):
  1. validate the config against the launched world (before any process group exists);
  2. start torch.distributed (+ DeepSpeed's comm) and build the TP/PP/DP topology;
  3. seed: DeepSpeed's RNG tracker (default stream per PP stage, TP stream per TP rank), which its
     activation checkpointing restores on recompute, so TP-region dropout is recompute-safe;
  4. data: the corpus (rank 0 builds the demo corpus) and this rank's loader, which also builds the
     routing plans on the host;
  5. model and engine: without PP an MoTModel under deepspeed.initialize (our topology as `mpu`, ZeRO
     0-3, MoT layers as ZeRO-3 leaf modules); with PP a PipelineModule (ZeRO <= 1). Per-modality and
     weight-decay param groups, our warm-up/decay schedule, TP sums of replicated partial gradients as
     gradient hooks (they run before DeepSpeed's own reduction hooks);
  6. resume from the latest checkpoint (model, optimizer, schedule, loader, RNG, step).

Loss normalisation: every micro-batch contributes loss_sum / N, with N the loss tokens of the whole
global batch (known to every rank from the loader), so the loss and its gradient do not depend on how
the batch is split over ranks and micro-batches; the factors DP (and accumulation under PP) undo
DeepSpeed's averaging.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import warnings
from typing import Optional

import torch
import torch.distributed as dist
from torch.profiler import record_function

from ..config import Config, dump_config, validate
from ..data import MoTDataLoader
from ..data.from_config import open_corpus
from ..distributed import Dims, ParallelTopology, detect_launch_env, init_distributed
from ..distributed import device as dev
from ..distributed.launch_env import LaunchEnv
from ..flops import peak_tflops, training_flops_per_token
from ..model import MoTLayer, MoTModel, ModelSettings, plan_for
from ..model.settings import DTYPES
from ..tensor_parallel import register_tp_grad_hooks, tp_partial_grad_params
from . import faults
from .checkpoint import CheckpointManager, rng_state, set_rng_state
from .ds_config import deepspeed_config
from .metrics import MetricsLogger, step_record
from .optim import WarmupDecayLR, lr_factor, param_groups
from .pipeline import build_pipeline_module, plan_inputs

# DeepSpeed's own collectives call torch APIs renamed in torch 2.13; the warning is theirs, not ours
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if dev.is_accelerator(device) else torch.float32
    return DTYPES[precision]


class Trainer:
    def __init__(self, cfg: Config, env: Optional[LaunchEnv] = None):
        import deepspeed
        from deepspeed import checkpointing as ds_ckpt
        self.cfg = cfg
        env = env or detect_launch_env(argv=sys.argv)
        self.layout = validate(cfg, world_size=env.world_size)                       # 1
        self.ctx = init_distributed(env, require_process_group=True)                  # 2
        deepspeed.init_distributed(dist_backend=self.ctx.backend)
        self.device, self.rank = self.ctx.device, self.ctx.rank
        L = self.layout
        self.topo = ParallelTopology.build(Dims(L.tp, L.pp, L.dp))
        self.dtype = resolve_dtype(cfg.train.precision, self.device)
        self.run_dir = cfg.run.output_dir
        if self.rank == 0:
            os.makedirs(self.run_dir, exist_ok=True)
            dump_config(cfg, os.path.join(self.run_dir, "config.yaml"))
        ds_ckpt.configure(self.topo.mpu(), partition_activations=False, contiguous_checkpointing=False,
                          checkpoint_in_cpu=False)                                    # 3
        ds_ckpt.model_parallel_cuda_manual_seed(cfg.train.seed + 100 * self.topo.pp_rank)
        self.tracker = ds_ckpt.get_cuda_rng_tracker()
        self.settings = ModelSettings.from_config(cfg)
        if self.rank == 0:                                                            # 4
            self.corpus = open_corpus(cfg)
        dist.barrier()
        if self.rank != 0:
            self.corpus = open_corpus(cfg)
        self.ds_config = deepspeed_config(cfg, L, self.dtype, fused_adam=dev.is_accelerator(self.device))
        if self.rank == 0:
            with open(os.path.join(self.run_dir, "deepspeed_config.json"), "w") as f:
                json.dump(self.ds_config, f, indent=1)
        self._build_engine(deepspeed, ds_ckpt)                                        # 5
        self.loader = MoTDataLoader(
            self.corpus, seq_len=cfg.model.max_seq_len, micro_batch_size=L.micro_batch_size, dp_size=L.dp,
            dp_rank=self.topo.dp_rank, grad_accum=L.grad_accum, seed=cfg.train.seed, balance=cfg.data.balance,
            plan_builder=self._plan, device=self.device, prefetch=cfg.data.prefetch, num_workers=cfg.data.num_workers)
        self.ckpt = CheckpointManager(cfg.checkpoint.dir or os.path.join(self.run_dir, "checkpoints"),
                                      cfg.checkpoint.keep_last, self.rank)
        self.step = 0
        self._resume()                                                                # 6
        self.metrics = MetricsLogger(self.run_dir, self.rank == 0, cfg.logging.tensorboard, cfg.train.steps, self.step)
        self.flops_per_token = training_flops_per_token(self.settings, cfg.model.max_seq_len,
                                                        recompute=cfg.train.activation_checkpointing)
        self.model_flops_per_token = training_flops_per_token(self.settings, cfg.model.max_seq_len)
        self.peak = cfg.logging.peak_tflops or peak_tflops(dev.device_name(self.device))
        self._stop_requested = False
        # optional callbacks around every optimizer step (profiling, measurement): fn(step about to run /
        # just finished); on_step_end runs after the step's compute, before logging and checkpointing
        self.on_step_begin = self.on_step_end = None
        if cfg.checkpoint.save_on_sigterm:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    # ------------------------------------------------------------------------------------------ set-up
    def _build_engine(self, deepspeed, ds_ckpt) -> None:
        cfg, topo = self.cfg, self.topo
        ckpt_fn = ds_ckpt.checkpoint if cfg.train.activation_checkpointing else None
        if topo.pp_size > 1:
            self.model, self.pipe_loss = build_pipeline_module(self.settings, topo, self.tracker,
                                                               cfg.train.activation_checkpointing, ds_ckpt.checkpoint)
            self.pipe_loss.scale = float(topo.dp_size * self.layout.grad_accum)
            mpu = None  # the pipeline engine's grid is its mpu
        else:
            if cfg.parallel.zero_stage == 3:  # parameters are partitioned as they are created
                with deepspeed.zero.Init(config_dict_or_path=self.ds_config, mpu=topo.mpu()):
                    self.model = MoTModel(self.settings, tp_group=topo.tp_group, rng_tracker=self.tracker)
                # fetch a whole MoT layer at once: one gather per layer, never modality by modality
                deepspeed.utils.set_z3_leaf_modules(self.model, [MoTLayer])
            else:
                self.model = MoTModel(self.settings, tp_group=topo.tp_group, rng_tracker=self.tracker)
            self.model.activation_checkpoint = ckpt_fn
            self.pipe_loss, mpu = None, topo.mpu()
        register_tp_grad_hooks(tp_partial_grad_params(self.model), topo.tp_group)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.model, model_parameters=param_groups(self.model, cfg), config=self.ds_config, mpu=mpu,
            lr_scheduler=lambda opt: WarmupDecayLR(opt, cfg))

    def _plan(self, mb):
        return plan_for(self.settings, mb.modality_ids, mb.segment_ids, tp_size=self.topo.tp_size,
                        tp_rank=self.topo.tp_rank, device=self.device)

    def _resume(self) -> None:
        from ..convert import import_engine, is_universal
        resume = self.cfg.checkpoint.resume
        universal = resume not in ("auto", "none") and is_universal(resume)
        if universal and self.ckpt.latest() is None:
            # a universal checkpoint (another layout, or an upcycled dense model) starts this run; once the
            # run has checkpoints of its own, those win (a requeued job must not start over)
            state = import_engine(self, resume)
            self.step = int(state.get("step", 0))
            if "scheduler" in state:
                self.scheduler.load_state_dict(state["scheduler"])
            if "loader" in state:
                self.loader.load_state_dict(state["loader"])
            if self.rank == 0:
                print(f"[mot_parallel] started from universal checkpoint {resume} at step {self.step}", flush=True)
            return
        found = self.ckpt.resolve("auto" if universal else resume)
        if found is None:
            return
        client, rng = self.ckpt.load(self.engine, *found)
        self.step = int(client["step"])
        self.loader.load_state_dict(client["loader"])
        if rng is not None:
            set_rng_state(rng, self.device, self.tracker)
        if self.rank == 0:
            print(f"[mot_parallel] resumed from {os.path.join(*found)} at step {self.step}", flush=True)

    def _on_sigterm(self, signum, frame) -> None:
        self._stop_requested = True

    # ------------------------------------------------------------------------------------------ steps
    def _sync(self):
        on = self.cfg.logging.time_breakdown
        if on or (on is None and not dev.is_accelerator(self.device)):  # null: off on GPUs (4 syncs a step)
            dev.synchronize(self.device)
        return time.perf_counter()

    def _train_step(self, batch):
        """One optimizer step over this rank's micro-batches; returns (loss sums, counts, time split)."""
        norm = float(batch.global_label_counts.sum())
        times = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        if self.pipe_loss is not None:
            data = [(plan_inputs(mb.tokens, mb.plan),
                     (mb.labels, mb.label_modalities, batch.global_label_counts.to(self.device)))
                    for mb in batch.micro_batches]
            t = self._sync()
            with record_function("mot/pipeline"):
                self.engine.train_batch(data_iter=iter(data))
            times = {"pipeline": self._sync() - t}
            return self._pipeline_sums(), times
        m = self.settings.num_modalities
        loss_sum, count = torch.zeros(m, device=self.device), torch.zeros(m, device=self.device)
        for mb in batch.micro_batches:
            t0 = self._sync()
            with record_function("mot/forward"):
                out = self.engine(mb.tokens, mb.plan, mb.labels, mb.label_modalities)
            t1 = self._sync()
            with record_function("mot/backward"):
                self.engine.backward(out.loss_sum.sum() * (self.topo.dp_size / norm), scale_wrt_gas=False)
            t2 = self._sync()
            with record_function("mot/optimizer"):
                self.engine.step()
            t3 = self._sync()
            times["forward"] += t1 - t0
            times["backward"] += t2 - t1
            times["optimizer"] += t3 - t2
            loss_sum += out.loss_sum.detach().float()
            count += out.token_count
        sums = torch.cat([loss_sum, count])
        dist.all_reduce(sums, group=self.topo.dp_group)
        return (sums[:m], sums[m:]), times

    def _pipeline_sums(self):
        """Per-modality sums of the step from the last stage, to every stage (rank 0 logs)."""
        m = self.settings.num_modalities
        sums = torch.zeros(2 * m, device=self.device)
        if self.topo.is_last_stage:
            loss_sum, count = self.pipe_loss.pop()
            sums = torch.cat([loss_sum.float(), count])
            dist.all_reduce(sums, group=self.topo.dp_group)
        dist.broadcast(sums, src=self.topo.pp_ranks[-1], group=self.topo.pp_group)
        return sums[:m], sums[m:]

    def _stop_agreed(self) -> bool:
        """SIGTERM may reach ranks at different steps: agree (MAX over the world) before acting on it."""
        flag = torch.tensor([1.0 if self._stop_requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def export_universal(self, path: str) -> None:
        """Write the current state as a layout-independent universal checkpoint (collective)."""
        from ..convert import export_engine
        export_engine(self, path)

    def save(self) -> None:
        state = {"step": self.step, "loader": self.loader.state_dict()}
        tag = self.ckpt.save(self.engine, self.step, state, rng_state(self.device, self.tracker))
        if self.rank == 0:
            print(f"[mot_parallel] saved checkpoint {tag}", flush=True)

    def train(self) -> None:
        cfg, L = self.cfg, self.layout
        tokens_per_step = L.global_batch_size * cfg.model.max_seq_len
        last_saved = self.step
        try:
            while self.step < cfg.train.steps:
                if self.on_step_begin is not None:
                    self.on_step_begin(self.step + 1)
                t0 = time.perf_counter()
                with record_function("mot/data"):
                    batch = next(self.loader)
                t_data = time.perf_counter() - t0
                lr = cfg.train.optimizer.lr * lr_factor(self.step, cfg)
                with record_function("mot/step"):
                    (loss_sum, count), times = self._train_step(batch)
                self.step += 1
                step_time = time.perf_counter() - t0
                if self.on_step_end is not None:
                    self.on_step_end(self.step)
                if not torch.equal(count.cpu(), batch.global_label_counts):
                    raise RuntimeError(f"step {self.step}: ranks' loss tokens {count.tolist()} differ from the "
                                       f"planned global count {batch.global_label_counts.tolist()}")
                if self.step % cfg.logging.interval == 0 or self.step == cfg.train.steps:
                    times = {"data": t_data, **times}
                    self.metrics.log(step_record(
                        self.step, loss_sum.tolist(), count.tolist(), cfg.model.modalities, lr,
                        self.engine.get_global_grad_norm(), tokens_per_step, step_time, self.flops_per_token,
                        self.model_flops_per_token, self.ctx.world_size, self.peak, dev.peak_memory_gb(self.device),
                        times))
                faults.maybe_fault_after_step(self.step)
                if cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0:
                    self.save()
                    last_saved = self.step
                if self._stop_agreed():
                    if self.rank == 0:
                        print(f"[mot_parallel] SIGTERM: checkpointing at step {self.step} and exiting", flush=True)
                    if last_saved != self.step:
                        self.save()
                    return
            if last_saved != self.step:
                self.save()
            if self.rank == 0:  # the Slurm script does not requeue a finished run
                with open(os.path.join(self.run_dir, "COMPLETED"), "w") as f:
                    f.write(f"{self.step}\n")
        finally:
            self.loader.close()
            self.metrics.close()
