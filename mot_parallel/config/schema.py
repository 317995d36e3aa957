"""The typed configuration: nested dataclasses, every field documented in its `help` metadata.

Precedence is defaults < YAML (with `base:` inheritance) < command-line `key=value` (see loader.py).
`python -m mot_parallel.config --help-keys` prints every key with its type, default and help.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

UNTIE_PARTS = ("attention", "ffn", "norms")
DEMO_CORPUS = "demo"  # data.path naming the offline demo corpus


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and a help string (mutable defaults are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help})
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return field(default_factory=default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class InitConfig:
    std: float = opt(0.02, "Std of the normal init of every weight matrix and the embedding.")
    scale_output_by_depth: bool = opt(
        True, "Scale the std of output projections (W_O, FFN down) by 1/sqrt(2*num_layers) (GPT-2/Megatron).")
    modality_copies: Literal["independent", "shared_start"] = opt(
        "independent",
        "How the per-modality copies of an untied weight start: 'independent' (each modality its own draw) "
        "or 'shared_start' (all copies equal: the upcycling start of BAGEL/LMFusion).")


@dataclass
class RopeScalingConfig:
    rope_type: Literal["default", "llama3"] = opt(
        "default", "'default': plain RoPE. 'llama3': Llama-3.1's frequency scaling (the keys below); other "
        "scalings (linear, dynamic, yarn, longrope) are not supported.")
    factor: float = opt(8.0, "llama3: how much the low frequencies are slowed.")
    low_freq_factor: float = opt(1.0, "llama3: wavelengths above original_max_position_embeddings / this are slowed.")
    high_freq_factor: float = opt(4.0, "llama3: wavelengths below original_max_position_embeddings / this are kept.")
    original_max_position_embeddings: int = opt(8192, "llama3: the context length the model was pretrained at.")


@dataclass
class ContinuousConfig:
    """One continuous modality (the Transfusion setting): an image as a grid of patch vectors."""
    source: Literal["latents", "pixels"] = opt(
        "latents", "What a patch holds: VAE latents (decoded by the VAE when sampling) or raw pixels in [-1, 1].")
    channels: int = opt(8, "Channels per grid cell: latent channels (Transfusion: 8) or 3 for RGB pixels.")
    patch: int = opt(2, "Patch side in grid cells (Transfusion: 2 x 2 latent cells; patch vector = channels*patch^2).")
    grid: List[int] = opt([16, 16], "Patches per image, [height, width] (Transfusion: 256 px -> 32x32 latents -> 16x16).")
    boi_token: Optional[int] = opt(None, "Text-side id that opens an image (BOI); generation emits it before the patches.")
    eoi_token: Optional[int] = opt(None, "Text-side id that closes an image (EOI).")
    patch_encoder: Literal["linear", "unet"] = opt(
        "linear", "How patches enter and leave the transformer (Transfusion §3.2): 'linear', one projection per "
        "patch; 'unet', U-Net down blocks before and up blocks after the transformer (model/unet.py).")
    unet_channels: int = opt(32, "patch_encoder unet: convolution width at full resolution (a multiple of 4), "
                             "doubled at each downsampling step (one per prime factor of the patch side).")
    position_embedding: Literal["none", "sincos2d"] = opt(
        "none", "Where a patch sits in its image, added to its input vector: 'none' (the Transfusion paper's: "
        "RoPE's 1-D positions only, so a patch's row and column are learnt from its offset to BOI) or "
        "'sincos2d', DiT's fixed 2-D sine-cosine embedding of (row, column) (model/image_positions.py).")


@dataclass
class ModelConfig:
    hidden_size: int = opt(256, "Model width D.")
    num_layers: int = opt(4, "Number of transformer layers.")
    num_heads: int = opt(8, "Attention (query) heads; must be divisible by parallel.tensor_parallel.")
    num_kv_heads: Optional[int] = opt(
        None, "Key/value heads for grouped-query attention (null = num_heads); divides num_heads and is "
        "divisible by parallel.tensor_parallel.")
    ffn_hidden_size: Optional[int] = opt(
        None, "SwiGLU inner width (null = 8/3*hidden rounded up to a multiple of 128, Llama's rule).")
    vocab_size: int = opt(65536, "Vocabulary size shared by all modalities (Chameleon: 65536 incl. 8192 image codes).")
    make_vocab_size_divisible_by: int = opt(
        128, "Pad the embedding/head rows to a multiple of this times tensor_parallel; padded logits are masked.")
    max_seq_len: int = opt(2048, "Training sequence length (tokens per packed sequence).")
    rope_theta: float = opt(10000.0, "RoPE base frequency.")
    rope_scaling: RopeScalingConfig = opt(RopeScalingConfig, "RoPE frequency scaling (Llama-3.1 style).")
    norm_eps: float = opt(1e-5, "RMSNorm epsilon.")
    modalities: List[str] = opt(["text", "image"], "Modality names, in modality-id order (id i = modalities[i]).")
    untie: List[str] = opt(
        list(UNTIE_PARTS),
        "Which parts get one copy per modality: any subset of [attention, ffn, norms]. All three = MoT; "
        "[ffn] = the paper's FFN-only ablation; [] = the dense baseline (no routing at all).")
    norm_placement: Literal["pre", "post"] = opt(
        "pre", "'pre': x + Attn(Norm(x)) (Llama/BAGEL; upcycles dense checkpoints). 'post': x + Norm(Attn(x)), "
        "the paper's Eq. 1 (Chameleon norm reordering).")
    qkv_bias: bool = opt(False, "Biases on the Q, K, V projections (Qwen2/BAGEL; per modality when attention is "
                         "untied). No other linear has a bias.")
    qk_norm: bool = opt(False, "RMSNorm on queries and keys per head dim (per modality when attention is untied).")
    untie_final_norm: bool = opt(False, "One final norm per modality (BAGEL) instead of a shared one.")
    continuous: Dict[str, ContinuousConfig] = opt(
        {}, "Continuous modalities (Transfusion): {modality: {source, channels, patch, grid, boi_token, eoi_token, "
        "patch_encoder, unet_channels, position_embedding}}; their patches enter through an input projection (or U-Net down blocks) "
        "+ timestep embedding and leave through an output projection (or U-Net up blocks) trained with the "
        "diffusion loss. Every other modality is discrete (token ids).")
    tie_embeddings: bool = opt(False, "Share the input embedding with the output head.")
    attention_dropout: float = opt(0.0, "Dropout on attention probabilities (pretraining normally 0).")
    hidden_dropout: float = opt(0.0, "Dropout on sub-layer outputs before the residual add.")
    init: InitConfig = opt(InitConfig, "Weight initialisation.")


@dataclass
class DiffusionConfig:
    """How continuous modalities are trained (Transfusion: DDPM, cosine schedule, epsilon prediction)."""
    loss_weight: float = opt(5.0, "lambda in L = L_LM + lambda * L_diffusion (Transfusion: 5).")
    timesteps: int = opt(1000, "DDPM steps T.")
    schedule: Literal["cosine"] = opt("cosine", "Noise schedule (Nichol & Dhariwal's cosine).")
    timestep_sampling: Literal["uniform", "logit_normal"] = opt(
        "uniform", "How training draws t: 'uniform' in [0, T) (Transfusion's), or 'logit_normal': t/T = "
        "sigmoid(timestep_mean + timestep_std z), z ~ N(0, 1) (SD3's), which with timestep_mean > 0 trains more "
        "at high noise, where a small object's place is decided (model/diffusion.py).")
    timestep_mean: float = opt(0.0, "Logit-normal t sampling: the mean of logit(t/T).")
    timestep_std: float = opt(1.0, "Logit-normal t sampling: the standard deviation of logit(t/T), > 0.")
    prediction: Literal["epsilon", "v"] = opt(
        "epsilon", "What the model predicts under MSE: 'epsilon', the noise (Transfusion's), or 'v' = sqrt(abar) eps "
        "- sqrt(1 - abar) x_0 (Salimans & Ho), whose loss keeps weight on the clean image at high noise "
        "(model/diffusion.py says why; docs/transfusion.md measures both).")
    image_first_max_t: int = opt(
        500, "Noise limiting: t < this for an image that opens its document (image -> caption), so the caption "
        "is learnt from a recognisable image (Transfusion: 500); 0 = off.")
    condition_dropout: float = opt(
        0.1, "Probability that an image's patches do not see the text before it (the caption), so sampling can "
        "use classifier-free guidance.")


@dataclass
class ParallelConfig:
    tensor_parallel: int = opt(1, "Tensor-parallel size (Megatron TP); divides heads, kv heads, ffn size.")
    pipeline_parallel: int = opt(1, "Pipeline stages; divides num_layers. Needs zero_stage <= 1.")
    sequence_parallel: bool = opt(False, "Megatron sequence parallelism inside the TP group (no-op at TP=1).")
    zero_stage: int = opt(1, "DeepSpeed ZeRO stage 0-3 over the data-parallel group (<= 1 with pipelines).")
    collective_timeout_s: float = opt(
        1800.0, "Seconds a rank waits in a collective (or the start-up rendezvous) before failing with an error, "
        "so a stopped, deadlocked or dead rank cannot hang the others for long; must exceed the longest "
        "legitimate wait (start-up skew, the slowest step, a checkpoint save). Applies to every group, gloo or NCCL.")


@dataclass
class OptimizerConfig:
    name: Literal["adamw"] = opt("adamw", "Optimizer (AdamW, decoupled weight decay).")
    lr: float = opt(3e-4, "Peak learning rate.")
    betas: List[float] = opt([0.9, 0.95], "Adam betas.")
    eps: float = opt(1e-8, "Adam epsilon.")
    weight_decay: float = opt(0.1, "Decoupled weight decay; never applied to norms, biases or embeddings.")
    modality_lr_scale: Dict[str, float] = opt(
        {}, "Optional per-modality LR multiplier for that modality's untied weights, e.g. {image: 0.5}; "
        "0 freezes the modality's copies (LMFusion-style: keep the text weights, train the new ones).")


@dataclass
class ScheduleConfig:
    warmup_steps: int = opt(100, "Linear warm-up steps from 0 to the peak LR.")
    decay: Literal["cosine", "linear", "constant"] = opt("cosine", "Decay after warm-up, down to min_lr_ratio*lr.")
    min_lr_ratio: float = opt(0.05, "Final LR as a fraction of the peak (paper: 1.5e-5 / 3e-4 = 0.05).")


@dataclass
class TrainConfig:
    micro_batch_size: int = opt(1, "Sequences per micro-batch per data-parallel rank.")
    global_batch_size: Optional[int] = opt(
        None, "Sequences per optimizer step over all ranks = micro_batch_size * DP * accumulation "
        "(null = micro_batch_size * DP, no accumulation).")
    steps: int = opt(100, "Optimizer steps to train.")
    seed: int = opt(1234, "Seed for weights, data order and dropout.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt(
        "auto", "'auto' = bf16 on GPU, fp32 on CPU (bf16 matmuls are ~100x slower on CPU).")
    grad_clip: float = opt(1.0, "Clip the global gradient norm to this (0 = off).")
    activation_checkpointing: bool = opt(False, "Recompute each layer in backward (DeepSpeed checkpointing).")
    eval_interval: int = opt(
        1000, "Evaluate on the validation data every N optimizer steps (and at the end); 0 = only at the end. "
        "Needs data.valid_path or data.valid_fraction.")
    eval_iters: int = opt(
        10, "Global batches per evaluation (the same batches every time, so evaluations compare point to point).")
    optimizer: OptimizerConfig = opt(OptimizerConfig, "Optimizer settings.")
    lr_schedule: ScheduleConfig = opt(ScheduleConfig, "Learning-rate schedule.")


@dataclass
class DataConfig:
    path: Any = opt(
        "demo", "Prefix of a Megatron indexed dataset (<path>.bin/.idx, tools/preprocess_data.py), or a blend of "
        "several with weights, Megatron's way: 'w1 prefix1 w2 prefix2 ...' (or a list [w1, prefix1, ...]); "
        "'demo' = the offline demo corpus, built deterministically under <run.output_dir>/demo_corpus (a corpus "
        "prefix named demo is ./demo). Empty or null is refused: an unset variable must not train on the demo.")
    valid_path: Any = opt(
        None, "Validation corpus or blend (same forms as data.path); null = hold out data.valid_fraction of the "
        "training documents, or no validation when that is 0.")
    valid_fraction: float = opt(
        0.0, "Fraction of every training source's documents held out for validation when data.valid_path is "
        "null (a fixed hash of the document index decides: the same documents for every run and seed).")
    modality_token_ranges: Dict[str, List[int]] = opt(
        {}, "Optional {modality: [first_id, end_id]}: take modalities from token-id ranges (Chameleon-style "
        "plain corpora); ids outside every range belong to modalities[0].")
    atomic_modalities: Optional[List[str]] = opt(
        None, "Modalities whose segments packing never cuts (null = [image] when 'image' is a modality).")
    num_workers: int = opt(1, "Threads per rank reading micro-batches in the background.")
    prefetch: int = opt(2, "Optimizer steps of batches prepared ahead.")
    balance: bool = opt(True, "Per-modality load-balanced packing (else sequential, Megatron-style).")
    document_masking: bool = opt(True, "Mask attention across packed documents and reset positions per document.")
    demo_documents: int = opt(4000, "Documents in the generated demo corpus (when data.path is demo).")


@dataclass
class CheckpointConfig:
    dir: Optional[str] = opt(None, "Checkpoint directory (null = <run.output_dir>/checkpoints).")
    interval: int = opt(1000, "Save every N steps (0 = only at the end and on SIGTERM).")
    keep_last: int = opt(3, "Keep the newest K checkpoints (0 = keep all).")
    resume: str = opt(
        "auto", "'auto' (the run's newest complete checkpoint if any), 'none' (a fresh start; refused if "
        "checkpoint.dir holds checkpoints), a DeepSpeed checkpoint directory, or a universal checkpoint "
        "(tools/convert_checkpoint.py: another layout, or an upcycled HF model), which starts the run unless it "
        "already has checkpoints of its own.")
    on_corrupt: Literal["refuse", "previous"] = opt(
        "refuse", "When the newest checkpoint is incomplete or corrupt: 'refuse' to start (say what is wrong), or "
        "fall back to the 'previous' complete one.")
    save_on_sigterm: bool = opt(True, "On SIGTERM (Slurm preemption) or SIGINT (Ctrl-C) save a checkpoint and exit.")
    reshard_on_resume: Literal["auto", "refuse"] = opt(
        "auto", "A checkpoint written by another layout (DP, TP, PP, ZeRO stage; e.g. a job requeued onto other "
        "nodes): 'auto' reshards it into this run's layout as it loads (exact: the same state the explicit "
        "tools/convert_checkpoint.py reshard gives), 'refuse' stops with that command.")


@dataclass
class LoggingConfig:
    interval: int = opt(10, "Log metrics every N steps.")
    tensorboard: bool = opt(True, "Also write TensorBoard events under <run.output_dir>/tensorboard.")
    peak_tflops: Optional[float] = opt(
        None, "Per-device peak TFLOP/s for MFU (null = from the device table: A100 312, H100 989 bf16).")
    time_breakdown: Optional[bool] = opt(
        None, "Split step time into data/forward/backward/optimizer by synchronising the device between them "
        "(4 syncs per micro-batch): null = on for CPU (free there), off on GPUs (then the split is host time).")
    diagnostics: bool = opt(
        False, "On logging steps also record max attention logits per layer and (query, key) modality pair, "
        "per-modality gradient norms and update sizes (training/diagnostics.py; costs time, small runs only).")


@dataclass
class RunConfig:
    output_dir: str = opt("runs/default", "Run directory: resolved config, metrics, checkpoints, events.")
    name: Optional[str] = opt(None, "Run name for logs (null = the output_dir's basename).")


@dataclass
class Config:
    model: ModelConfig = opt(ModelConfig, "Model architecture and MoT options.")
    diffusion: DiffusionConfig = opt(DiffusionConfig, "Diffusion training of continuous modalities (Transfusion).")
    parallel: ParallelConfig = opt(ParallelConfig, "Parallel layout; DP = world_size / (TP * PP).")
    train: TrainConfig = opt(TrainConfig, "Training loop.")
    data: DataConfig = opt(DataConfig, "Data pipeline.")
    checkpoint: CheckpointConfig = opt(CheckpointConfig, "Checkpointing and resume.")
    logging: LoggingConfig = opt(LoggingConfig, "Metrics and logs.")
    run: RunConfig = opt(RunConfig, "Run directory.")
    deepspeed: Dict[str, Any] = opt(
        {}, "Extra DeepSpeed config keys merged over the generated ones (free-form, passed through).")
