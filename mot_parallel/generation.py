"""Generation with a trained model (single process, TP = 1): text by sampling tokens, an image by DDIM.

    model = mot_parallel.load_pretrained("runs/demo_transfusion/universal")
    ids = generate_text(model.model, prompt_ids, max_new_tokens=20)            # greedy at temperature 0
    patches = generate_image(model.model, caption_ids, steps=50, cfg_scale=3.0, seed=0)   # [P, patch_dim]

Text: the whole sequence is run again for every new token (no KV cache yet: the models this runs on here are
small; a cache needs an incremental attention path). Image: the caption, the image's BOI marker and P patch
positions; every patch starts as Gaussian noise and is denoised with deterministic DDIM steps; each step runs
the model conditioned (caption + BOI + patches) and unconditioned (BOI + patches: what condition dropout
trained) and mixes the noise predictions, eps = eps_u + cfg_scale * (eps_c - eps_u) (classifier-free
guidance). The patches attend to each other bidirectionally and to the context causally, as in training.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from .model.diffusion import cosine_alpha_bar, ddim_sample
from .model.model import MoTModel
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


def _eps(model: MoTModel, context: Sequence[int], x: torch.Tensor, t: int, m: int) -> torch.Tensor:
    """The model's noise prediction for the image patches `x` [P, D] at timestep t after `context` tokens."""
    n, p = len(context), x.shape[0]
    tokens = torch.tensor(list(context) + [0] * p).view(-1, 1)
    mods = torch.tensor([0] * n + [m] * p).view(-1, 1)
    spans = torch.tensor([-1] * n + [0] * p).view(-1, 1)
    plan = model.build_plan(mods, torch.zeros_like(tokens), span_ids=spans)
    k = model.settings.continuous_ids().index(m)
    inputs = [(torch.zeros(0, c.patch_dim), torch.zeros(0, dtype=torch.long)) for c in model.settings.continuous]
    inputs[k] = (x, torch.full((p,), t, dtype=torch.long))
    device = _device(model)
    inputs = [(a.to(device), b.to(device), None) for a, b in inputs]
    _, preds = model(tokens.to(device), plan, continuous=inputs)
    return preds[k][1].float()


@torch.no_grad()
def generate_image(model: MoTModel, caption: Sequence[int], modality: str = "image", steps: int = 50,
                   cfg_scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    """Patches [P, patch_dim] of an image of `modality` for the caption token ids (DDIM, CFG)."""
    model.eval()
    s = model.settings
    check_image_request(s, caption, modality, steps, cfg_scale)  # SamplingError (a ValueError) names the argument
    spec = s.spec(modality)
    m = s.modalities.index(modality)
    boi = [spec.boi_token] if spec.boi_token is not None else []
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(spec.num_patches, spec.patch_dim, generator=g).to(_device(model))

    def guided(x, t):
        eps = _eps(model, list(caption) + boi, x, t, m)
        if cfg_scale == 1.0:
            return eps
        eps_u = _eps(model, boi, x, t, m)
        return eps_u + cfg_scale * (eps - eps_u)
    x = ddim_sample(guided, x_T, cosine_alpha_bar(s.diffusion_timesteps), steps,
                    clip=1.0 if spec.source == "pixels" else 0.0)  # pixels live in [-1, 1]
    return x.cpu()
