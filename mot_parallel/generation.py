"""Generation with a trained model (single process, TP = 1): text by sampling tokens, an image by DDIM.

    model = mot_parallel.load_pretrained("runs/demo_transfusion/universal")
    ids = generate_text(model.model, prompt_ids, max_new_tokens=20)            # greedy at temperature 0
    patches = generate_image(model.model, caption_ids, steps=50, cfg_scale=3.0, seed=0)   # [P, patch_dim]

    pictures = generate_images(model.model, [ids_a, ids_b], steps=25, seeds=[0, 1])  # sampled together

Text: the whole sequence is run again for every new token (no KV cache yet: the models this runs on here are
small; a cache needs an incremental attention path). Image: the caption, the image's BOI marker and P patch
positions; every patch starts as Gaussian noise and is denoised with deterministic DDIM steps; each step runs
the model conditioned (caption + BOI + patches) and unconditioned (BOI + patches: what condition dropout
trained) and mixes the predictions (of the noise or of v, diffusion.prediction), out = out_u + cfg_scale *
(out_c - out_u) (classifier-free guidance; linear in either, so both mix alike). The patches attend to each
other bidirectionally and to the context causally, as in training.
Both passes of every picture of a batch run as columns of one forward, whose plan is built once.
The caption's keys and values are recomputed at every step rather than cached: on CPU at the demo's size
that recomputation is a minority of a step's time (tools/bench_sampling.py measures it).
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from .model.diffusion import clean_and_noise, cosine_alpha_bar, ddim_sample
from .model.model import MoTModel
from .model.unet import image_order
from .sampling_checks import check_ids, check_image_request


def _device(model: MoTModel) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_text(model: MoTModel, prompt: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                  modality: int = 0, seed: int = 0, stop_token: int = None) -> List[int]:
    """Continue `prompt` (token ids of `modality`) by up to max_new_tokens tokens of that modality."""
    model.eval()
    check_ids(model.settings, prompt, "the prompt")
    g = torch.Generator().manual_seed(seed)
    ids = list(prompt)
    vocab = model.settings.vocab_size
    for _ in range(max_new_tokens):
        tokens = torch.tensor(ids).view(-1, 1)
        plan = model.build_plan(torch.full_like(tokens, modality), torch.zeros_like(tokens))
        out = model(tokens.to(_device(model)), plan)
        logits = out[0] if isinstance(out, tuple) else out
        last = plan.to_sequence(logits)[-1, :vocab].float().cpu()
        nxt = int(last.argmax()) if temperature <= 0 else int(torch.multinomial(
            torch.softmax(last / temperature, -1), 1, generator=g))
        ids.append(nxt)
        if stop_token is not None and nxt == stop_token:
            break
    return ids[len(prompt):]


class _ImageBatch:
    """One forward's layout for n pictures sampled together: per picture a conditioned column (caption, BOI,
    P patch positions) and, with guidance, an unconditioned one (BOI, patches: what condition dropout
    trained), padded at the end with a separate document that nothing attends to. Built once per batch:
    the plan (routing, attention mask) does not change between DDIM steps, only the patches and t do."""

    def __init__(self, model: MoTModel, contexts: Sequence[Sequence[int]], m: int, num_patches: int):
        s, self.m, self.p = max(len(c) for c in contexts) + num_patches, m, num_patches
        b = len(contexts)
        tokens, mods = torch.zeros(s, b, dtype=torch.long), torch.zeros(s, b, dtype=torch.long)
        segments, spans = torch.ones(s, b, dtype=torch.long), torch.full((s, b), -1, dtype=torch.long)
        for j, c in enumerate(contexts):
            n = len(c)
            tokens[:n, j] = torch.tensor(list(c), dtype=torch.long)
            mods[n:n + num_patches, j], spans[n:n + num_patches, j] = m, 0
            segments[:n + num_patches, j] = 0
        self.device = _device(model)
        self.tokens = tokens.to(self.device)
        self.plan = model.build_plan(mods, segments, span_ids=spans)
        self.order = image_order(self.plan, m, num_patches, self.device)    # grouped rows -> picture order
        self.inverse = torch.argsort(self.order)

    def outputs(self, model: MoTModel, x: torch.Tensor, t: int) -> torch.Tensor:
        """The model's predictions (noise or v) [b, P, D] for the patches `x` [b, P, D] (column order) at timestep t."""
        s = model.settings
        k = s.continuous_ids().index(self.m)
        inputs = [(torch.zeros(0, c.patch_dim, device=self.device), torch.zeros(0, dtype=torch.long, device=self.device),
                   None) for c in s.continuous]
        rows = x.reshape(-1, x.shape[-1]).index_select(0, self.inverse)
        inputs[k] = (rows, torch.full((rows.shape[0],), t, dtype=torch.long, device=self.device), None)
        _, preds = model(self.tokens, self.plan, continuous=inputs)
        return preds[k][1].float().index_select(0, self.order).view_as(x)


def _x0_clip(spec) -> float:
    """The clamp of clean estimates: pixels live in [-1, 1]; latents are unbounded (clean_and_noise's clip)."""
    return 1.0 if spec.source == "pixels" else 0.0


@torch.no_grad()
def generate_images(model: MoTModel, captions: Sequence[Sequence[int]], modality: str = "image", steps: int = 50,
                    cfg_scale: float = 3.0, seeds: Sequence[int] = (), on_step=None) -> List[torch.Tensor]:
    """Patches [P, patch_dim] of one image per caption (token ids), sampled together in one batch (DDIM,
    CFG); picture i starts from the noise of seed seeds[i] (default i), as generate_image(seed=seeds[i]).
    `on_step(t, x0)` sees each step's guided clean estimates [n, P, patch_dim] (ddim_sample)."""
    model.eval()
    s = model.settings
    for caption in captions:  # SamplingError (a ValueError) names the argument
        check_image_request(s, caption, modality, steps, cfg_scale)
    spec = s.spec(modality)
    boi = [spec.boi_token] if spec.boi_token is not None else []
    guided = cfg_scale != 1.0
    contexts = [ctx for c in captions for ctx in ([list(c) + boi, boi] if guided else [list(c) + boi])]
    batch = _ImageBatch(model, contexts, s.modalities.index(modality), spec.num_patches)
    seeds = list(seeds) or list(range(len(captions)))
    x_T = torch.stack([torch.randn(spec.num_patches, spec.patch_dim, generator=torch.Generator().manual_seed(seed))
                       for seed in seeds]).to(batch.device)

    def predict(x, t):
        if not guided:
            return batch.outputs(model, x, t)
        out = batch.outputs(model, x.repeat_interleave(2, dim=0), t)
        out_c, out_u = out[0::2], out[1::2]
        return out_u + cfg_scale * (out_c - out_u)
    x = ddim_sample(predict, x_T, cosine_alpha_bar(s.diffusion_timesteps), steps,
                    clip=_x0_clip(spec), prediction=s.diffusion_prediction, on_step=on_step)
    return list(x.cpu())


def clean_estimator(model: MoTModel, modality: str = "image", batch: int = 16):
    """estimate(contexts, x_t, t): the model's clean-patch estimates x0_hat [n, P, D] of noised patches x_t
    [n, P, D] at timestep t, each after its token context (no guidance), `batch` pictures per forward; what a
    DDIM step reads from the model (studies/denoiser_probe.py)."""
    s = model.settings
    spec, m, alpha_bar = s.spec(modality), s.modalities.index(modality), cosine_alpha_bar(s.diffusion_timesteps)

    @torch.no_grad()
    def estimate(contexts: Sequence[Sequence[int]], x_t: torch.Tensor, t: int) -> torch.Tensor:
        model.eval()
        out = []
        for i in range(0, len(contexts), batch):
            b = _ImageBatch(model, contexts[i:i + batch], m, spec.num_patches)
            x = x_t[i:i + batch].to(b.device)
            x0, _ = clean_and_noise(x, b.outputs(model, x, t), float(alpha_bar[t]), s.diffusion_prediction,
                                    clip=_x0_clip(spec))
            out.append(x0.cpu())
        return torch.cat(out)
    return estimate


def generate_image(model: MoTModel, caption: Sequence[int], modality: str = "image", steps: int = 50,
                   cfg_scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    """Patches [P, patch_dim] of an image of `modality` for the caption token ids (DDIM, CFG)."""
    return generate_images(model, [caption], modality, steps, cfg_scale, [seed])[0]
