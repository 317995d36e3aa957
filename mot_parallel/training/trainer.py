"""The training loop on a DeepSpeed engine.

Set-up, in order (each step needs the previous one):
  1. validate the config against the launched world and derive the ParallelLayout; decide which
     checkpoint to resume and check that checkpoints can be written (all before any process group);
  2. start torch.distributed (+ DeepSpeed's comm) and build the TP/PP/DP topology from the layout;
  3. seed every random stream (rng.py: DeepSpeed's RNG tracker for TP-region dropout, recompute-safe);
  4. data: the training (and validation) data, a corpus or a blend (rank 0 builds the demo corpus), and
     this rank's loader, which also builds the routing plans on the host;
  5. model and engine: without PP an MoTModel under deepspeed.initialize (our topology as `mpu`, ZeRO
     0-3, MoT layers as ZeRO-3 leaf modules); with PP a PipelineModule (ZeRO <= 1). Per-modality and
     weight-decay param groups, our warm-up/decay schedule, TP sums of replicated partial gradients as
     gradient hooks (they run before DeepSpeed's own reduction hooks);
  6. the checkpoint manager, given the explicit stateful parts (engine, training step, loader, RNG), and
     the resume from step 1's target.

Loss normalisation: every micro-batch contributes loss_sum / N, with N the loss tokens of the whole
global batch (known to every rank from the loader), so the loss and its gradient do not depend on how
the batch is split over ranks and micro-batches; the factors DP (and accumulation under PP) undo
DeepSpeed's averaging (steps.py).
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.profiler import record_function

from ..config import Config, dump_config, validate
from ..data import LoaderSettings, MoTDataLoader
from ..data.datasets import open_datasets
from ..distributed import ParallelTopology, detect_launch_env, init_distributed
from ..distributed import device as dev
from ..distributed.launch_env import LaunchEnv
from ..distributed.op_build_lock import check_op_build_locks
from ..model import MoTLayer, MoTModel, ModelSettings, plan_for
from ..model.diffusion import noiser_for
from ..model.model import objective_weights
from ..model.settings import DTYPES
from ..tensor_parallel import register_tp_grad_hooks, tp_partial_grad_params
from . import rng
from .checkpoint import CheckpointContents, CheckpointManager, TrainState
from .ds_config import deepspeed_config
from .diagnostics import Diagnostics
from .evaluate import Evaluator
from .faults import FaultInjector
from .metrics import MetricsLogger, StepStats, ThroughputBasis, step_record, valid_record
from .model_record import model_record
from .optim import WarmupDecayLR, lr_factor, param_groups
from .resume import checkpoint_dir, resolve_resume
from .run_dir import claim_run_dir
from .steps import StepRunner
from .supervision import StopRequest, watch_launcher

# DeepSpeed's own collectives call torch APIs renamed in torch 2.13; the warning is theirs, not ours
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")

StepHook = Optional[Callable[[int], None]]


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    return DTYPES[precision] if precision != "auto" else torch.bfloat16 if dev.is_accelerator(device) else torch.float32


class Trainer:
    """`on_step_begin(step about to run)` / `on_step_end(step just finished)`: optional hooks around every
    optimizer step (profiling, measurement); on_step_end runs after the step's compute, before logging and
    checkpointing."""

    def __init__(self, cfg: Config, env: Optional[LaunchEnv] = None, on_step_begin: StepHook = None,
                 on_step_end: StepHook = None):
        import deepspeed
        self.cfg, self.on_step_begin, self.on_step_end = cfg, on_step_begin, on_step_end
        env = env or detect_launch_env(argv=sys.argv)
        watch_launcher(env.launcher)  # launcher gone (e.g. SIGTERMed `deepspeed` runner): stop as on SIGTERM
        self.layout = L = validate(cfg, world_size=env.world_size)                   # 1
        self.resume_target = resolve_resume(cfg, L)
        claim_run_dir(cfg, env.rank)  # one run per directory; staging leftovers removed; writable
        check_op_build_locks()
        self.ctx = init_distributed(env, require_process_group=True,                  # 2
                                    timeout_s=cfg.parallel.collective_timeout_s)
        deepspeed.init_distributed(dist_backend=self.ctx.backend)
        self.device, self.rank = self.ctx.device, self.ctx.rank
        self.topo = ParallelTopology.build(L)
        self.dtype = resolve_dtype(cfg.train.precision, self.device)
        self.run_dir = cfg.run.output_dir
        if self.rank == 0:
            os.makedirs(self.run_dir, exist_ok=True)
            dump_config(cfg, os.path.join(self.run_dir, "config.yaml"))
        self.tracker = rng.seed_model_parallel(cfg.train.seed, self.topo.pp_rank, self.topo.mpu())   # 3
        self.settings = ModelSettings.from_config(cfg)
        self.data = self._open_data()                                                 # 4
        self.ds_config = deepspeed_config(cfg, L, self.dtype, fused_adam=dev.is_accelerator(self.device))
        if self.rank == 0:
            with open(os.path.join(self.run_dir, "deepspeed_config.json"), "w") as f:
                json.dump(self.ds_config, f, indent=1)
        self._build_engine(deepspeed)                                                 # 5
        self.loader = self._loader(self.data.train)
        self.state = TrainState()                                                     # 6
        self.fault = FaultInjector.from_env()
        contents = CheckpointContents(self.engine, {"train": self.state, "loader": self.loader},
                                      rng.RNGStreams(self.device, self.tracker))
        self.ckpt = CheckpointManager(checkpoint_dir(cfg), cfg.checkpoint.keep_last, self.rank, contents, L,
                                      fault=self.fault, model=model_record(cfg))
        self._resume()
        self.diagnostics = Diagnostics(self.model, self.topo, cfg.model.modalities, cfg.model.num_layers,
                                       cfg.logging.interval, cfg.train.steps) if cfg.logging.diagnostics else None
        self.step_runner = StepRunner(self.engine, self.topo, self.settings, self.device, pipe_loss=self.pipe_loss,
                                      time_breakdown=cfg.logging.time_breakdown,
                                      before_optimizer=self.diagnostics and self.diagnostics.before_optimizer)
        self.evaluator = None
        if self.data.valid is not None and cfg.train.eval_iters > 0:
            self.evaluator = Evaluator(lambda: self._loader(self.data.valid, train=False), self.engine, self.topo,
                                       self.settings.num_modalities, self.device, self.pipe_loss, cfg.train.eval_iters)
        self.metrics = MetricsLogger(self.run_dir, self.rank == 0, cfg.logging.tensorboard, cfg.train.steps, self.step)
        self.throughput = ThroughputBasis.of_run(cfg, self.settings, L, self.ctx.world_size,
                                                 dev.device_name(self.device))
        self.stop = StopRequest()
        if cfg.checkpoint.save_on_sigterm:
            self.stop.install()

    @property
    def step(self) -> int:
        return self.state.step

    # ------------------------------------------------------------------------------------------ set-up
    def _open_data(self):
        if self.rank == 0:  # rank 0 builds the demo corpus (or the token-range cache) first
            data = open_datasets(self.cfg)
        dist.barrier()
        return data if self.rank == 0 else open_datasets(self.cfg)

    def _loader(self, data, train: bool = True) -> MoTDataLoader:
        """This rank's loader of `data`; with continuous modalities it noises the images on the host
        (validation: no condition dropout)."""
        settings = LoaderSettings.from_config(self.cfg, self.layout, self.topo.dp_rank, train=train)
        return MoTDataLoader(data.table, settings, plan_builder=self._plan, device=self.device, order=data.order,
                             noiser=noiser_for(self.cfg, self.settings))

    def _build_engine(self, deepspeed) -> None:
        from deepspeed import checkpointing as ds_ckpt
        from .pipeline_module import build_pipeline_module  # imports DeepSpeed's pipeline: only when built
        cfg, topo = self.cfg, self.topo
        if topo.pp_size > 1:
            self.model, self.pipe_loss = build_pipeline_module(self.settings, topo, self.layout, self.tracker,
                                                               ds_ckpt.checkpoint)
            mpu = None  # the pipeline engine's grid is its mpu
        else:
            ckpt_fn = ds_ckpt.checkpoint if self.layout.activation_checkpointing else None

            def build():
                return MoTModel(self.settings, parallel=topo.context(), rng_tracker=self.tracker,
                                activation_checkpoint=ckpt_fn)
            if self.layout.zero_stage == 3:  # parameters are partitioned as they are created
                with deepspeed.zero.Init(config_dict_or_path=self.ds_config, mpu=topo.mpu()):
                    self.model = build()
                # fetch a whole MoT layer at once: one gather per layer, never modality by modality
                deepspeed.utils.set_z3_leaf_modules(self.model, [MoTLayer])
            else:
                self.model = build()
            self.pipe_loss, mpu = None, topo.mpu()
        register_tp_grad_hooks(tp_partial_grad_params(self.model), topo.tp_group)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.model, model_parameters=param_groups(self.model, cfg), config=self.ds_config, mpu=mpu,
            lr_scheduler=lambda opt: WarmupDecayLR(opt, cfg))

    def _plan(self, mb):
        return plan_for(self.settings, mb.modality_ids, mb.segment_ids, parallel=self.topo.context(),
                        device=self.device, span_ids=mb.span_ids, context_start=mb.context_start)

    def _resume(self) -> None:
        from .reshard import load_universal, resharded
        target = self.resume_target
        if target is None:
            return
        if target.reshard_from is not None:  # its own checkpoint, of another layout (reshard.py)
            with resharded(target, self) as universal:
                load_universal(self, universal)
        elif target.universal:  # another layout, or an upcycled dense model, starts this run
            load_universal(self, target.directory)
        else:
            self.ckpt.load(target.directory, target.tag)
        if self.rank == 0:  # every rank has loaded (the manager agrees on success before returning)
            print(f"[mot_parallel] resumed from {target.path} at step {self.step}", flush=True)

    # ------------------------------------------------------------------------------------------ steps
    def _stop_agreed(self) -> bool:
        """SIGTERM may reach ranks at different steps: agree (MAX over the world) before acting on it."""
        flag = torch.tensor([1.0 if self.stop.signal else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def training_state(self) -> dict:
        """Step, LR schedule and loader position as plain values (the universal checkpoint's state)."""
        return {"step": self.step, "train": self.state.state_dict(), "scheduler": self.scheduler.state_dict(),
                "loader": self.loader.state_dict()}

    def export_universal(self, path: str) -> None:
        """Write the current state as a layout-independent universal checkpoint (collective)."""
        from ..convert import export_engine
        export_engine(path, self.engine, self.topo, self.settings, self.cfg, self.training_state())

    def save(self) -> None:
        tag = self.ckpt.save(self.step)
        if self.rank == 0:
            print(f"[mot_parallel] saved checkpoint {tag}", flush=True)

    def _log(self, batch, sums, times, t_data, step_time) -> None:
        cfg, (loss_sum, count) = self.cfg, sums
        if not torch.equal(count.cpu(), batch.global_label_counts):
            raise RuntimeError(f"step {self.step}: ranks' loss tokens {count.tolist()} differ from the "
                               f"planned global count {batch.global_label_counts.tolist()}")
        if self.step % cfg.logging.interval and self.step != cfg.train.steps:
            return
        weights = objective_weights(self.settings, count).tolist()
        stats = StepStats(self.step, loss_sum.tolist(), count.tolist(), weights,
                          lr=cfg.train.optimizer.lr * lr_factor(self.step - 1, cfg),
                          grad_norm=self.engine.get_global_grad_norm(), step_time=step_time,
                          peak_mem_gb=dev.peak_memory_gb(self.device), times={"data": t_data, **times})
        record = step_record(stats, self.throughput)
        record.update(self.state.progress())
        if self.diagnostics is not None:
            record.update(self.diagnostics.end())
        for name, docs, tokens in zip(self.data.train.table.names, batch.source_docs or (), batch.source_tokens or ()):
            record[f"data/{name}/documents"], record[f"data/{name}/tokens"] = docs, tokens
        self.metrics.log(record)

    def evaluate(self) -> None:
        """Validation losses at the current step, into metrics.jsonl, TensorBoard and the console."""
        loss_sum, count, seconds = self.evaluator.run()
        self.metrics.log(valid_record(self.step, loss_sum.tolist(), count.tolist(),
                                      objective_weights(self.settings, count).tolist(), self.cfg.model.modalities,
                                      self.state.progress(), seconds))

    def _eval_due(self) -> bool:
        every = self.cfg.train.eval_interval
        return self.evaluator is not None and (self.step == self.cfg.train.steps or
                                               (every > 0 and self.step % every == 0))

    def train(self) -> None:
        cfg = self.cfg
        last_saved = self.step
        try:
            while self.step < cfg.train.steps:
                if self.on_step_begin is not None:
                    self.on_step_begin(self.step + 1)
                t0 = time.perf_counter()
                with record_function("mot/data"):
                    batch = next(self.loader)
                t_data = time.perf_counter() - t0
                if self.diagnostics is not None:
                    self.diagnostics.begin(self.step + 1, batch)
                with record_function("mot/step"):
                    sums, times = self.step_runner.run(batch)
                step_time = time.perf_counter() - t0
                tokens = self.throughput.tokens_per_step
                self.state.advance(tokens, self.throughput.model_flops(tokens, batch.global_label_counts), step_time)
                if self.on_step_end is not None:
                    self.on_step_end(self.step)
                self._log(batch, sums, times, t_data, step_time)
                if self._eval_due():
                    self.evaluate()
                if self.fault is not None:
                    self.fault.after_step(self.step, lambda: self.stop.signal)
                if cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0:
                    self.save()
                    last_saved = self.step
                if self._stop_agreed():
                    if self.rank == 0:
                        print(f"[mot_parallel] {self.stop.signal or 'a stop signal on another rank'}: "
                              f"checkpointing at step {self.step} and exiting", flush=True)
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
