"""Kernel-level GPU questions, each answered by one function returning {"rows": [...], "data": {...}}
(tools/gpu_check.py runs each in its own process and tabulates the rows):

  device_ceiling   the device, and the bf16 GEMM rate it reaches here (the realistic peak)
  grouped_gemm     per-modality GEMMs of one layer: loop of GEMMs vs torch._grouped_mm, weights stacked
                   once (as if stored stacked) or per call (as they are stored: one tensor per modality)
  attention_masks  packed documents and image-bidirectional spans: SDPA with the dense mask vs
                   FlexAttention with the block mask (time, peak memory, mask build time), and plain
                   causal SDPA (flash) as the floor
A row is (line, result, note). Shapes come from `shape` (dict), so the CPU smoke runs the same code tiny.
"""
from __future__ import annotations

import time
from typing import Dict, List

import torch

from ...distributed import device as dev
from ...distributed.collectives import even_sizes
from ...model.attention_core import attention_core
from ...model.attention_mask import build_attention_mask, flex_available
from ...model.grouped_ops import grouped_mm_forward
from .timing import time_interleaved


def _dtype(shape) -> torch.dtype:
    return torch.bfloat16 if shape.get("dtype", "bf16") == "bf16" else torch.float32


def device_ceiling(shape: Dict) -> Dict:
    device = dev.pick_device(0)
    info = dev.describe(device)
    n = shape.get("ceiling_n", 8192)
    a, b = (torch.randn(n, n, device=device, dtype=_dtype(shape)) for _ in range(2))
    ms = time_interleaved({"mm": lambda: torch.mm(a, b)}, rounds=shape.get("rounds", 10), warmup=3,
                          device=device)["mm"]
    measured = 2 * n ** 3 / (ms / 1e3) / 1e12
    peak = dev.peak_bf16_tflops(device)
    info.update(gemm_n=n, gemm_tflops=round(measured, 1), datasheet_peak_tflops=peak)
    rows = [("device", f"{info['name']} ({info.get('memory_gb', '-')} GiB), torch {info['torch']}, "
                       f"runtime {info.get('runtime', '-')}", f"capability {info.get('capability', '-')}"),
            (f"{shape.get('dtype', 'bf16')} GEMM {n}^3", f"{measured:.0f} TFLOP/s",
             f"datasheet dense bf16 peak {peak:.0f}" if peak else "no datasheet peak for this device")]
    return {"rows": rows, "data": info}


def _gemm_variants(x, ws, counts, offs):
    n_out = ws[0].shape[0]
    stacked = torch.stack(ws).transpose(1, 2)  # [G, in, out] view of [G, out, in]: the layout _grouped_mm takes
    variants = {"loop": lambda: grouped_mm_forward(x, ws, counts, [n_out])[0]}
    if hasattr(torch, "_grouped_mm"):
        variants["grouped_stacked_once"] = lambda: torch._grouped_mm(x, stacked, offs=offs)
        variants["grouped_stack_per_call"] = lambda: torch._grouped_mm(x, torch.stack(ws).transpose(1, 2), offs=offs)
    return variants


def grouped_gemm(shape: Dict) -> Dict:
    device, dtype = dev.pick_device(0), _dtype(shape)
    tokens, h, f = shape["tokens"], shape["hidden"], shape["ffn"]
    gemms = {"qkv": (h, 3 * h), "o": (h, h), "ffn_up": (h, 2 * f), "ffn_down": (f, h)}  # (in, out), MHA
    rows, data = [], {}
    for m in (2, 3):
        counts = even_sizes(tokens, m)
        offs = torch.tensor(counts, device=device).cumsum(0).to(torch.int32)
        totals: Dict[str, float] = {}
        for name, (k, n) in gemms.items():
            x = torch.randn(tokens, k, device=device, dtype=dtype)
            ws = [torch.randn(n, k, device=device, dtype=dtype) / k ** 0.5 for _ in range(m)]
            variants, entry = _gemm_variants(x, ws, counts, offs), {}
            ref = variants["loop"]()
            for label in [v for v in variants if v != "loop"]:  # a kernel that fails or differs is dropped
                try:
                    err = (variants[label]().float() - ref.float()).abs().max().item()
                    entry[f"{label}_max_abs_diff"] = err
                except Exception as e:  # noqa: BLE001 - record why this torch/device cannot run it
                    entry[f"{label}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    del variants[label]
            ms = time_interleaved(variants, rounds=shape.get("rounds", 10), warmup=2, device=device)
            for label, t in ms.items():
                entry[f"{label}_ms"] = round(t, 4)
                entry[f"{label}_tflops"] = round(2 * tokens * k * n / (t / 1e3) / 1e12, 2)
                totals[label] = totals.get(label, 0.0) + t
            data[f"M{m}/{name}"] = entry
        loop = totals["loop"]
        parts = [f"loop {loop:.3f} ms"] + [f"{k.replace('grouped_', 'grouped, ').replace('_', ' ')} "
                                           f"{t:.3f} ms (x{t / loop:.2f})" for k, t in totals.items() if k != "loop"]
        errors = sorted({v for e in data.values() for k, v in e.items() if k.endswith("_error")})
        rows.append((f"4 GEMMs of a layer, M={m}, {tokens} tokens", "; ".join(parts),
                     errors[0] if errors else "x = time / loop; < 1 favours torch._grouped_mm"))
    return {"rows": rows, "data": data}


def packed_documents(s: int, b: int, seed: int, lengths=(256, 1536)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    doc = torch.empty(s, b, dtype=torch.long)
    for j in range(b):
        pos, d = 0, 0
        while pos < s:
            n = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
            doc[pos:pos + n, j], pos, d = d, pos + n, d + 1
    return doc


def interleaved_images(s: int, b: int, seed: int, image: int = 1024, text=(64, 512), docs: int = 2):
    """Documents of text runs and images (`image` tokens, one bidirectional span each), Transfusion-style."""
    g = torch.Generator().manual_seed(seed)
    doc, span = torch.empty(s, b, dtype=torch.long), torch.full((s, b), -1, dtype=torch.long)
    bounds = [s * i // docs for i in range(docs + 1)]
    for j in range(b):
        for d, (a, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            doc[a:e, j], pos, img = d, a, 0
            while pos < e:
                pos += int(torch.randint(text[0], text[1] + 1, (1,), generator=g))
                n = min(image, e - pos)
                if n > 0:
                    span[pos:pos + n, j], pos, img = img, pos + n, img + 1
    return doc, span


def _attention_case(q, k, v, grad, mask, backward: bool, device):
    def step():
        out = attention_core(q, k, v, mask=mask)
        if backward:
            torch.autograd.grad(out, (q, k, v), grad)
        return out
    dev.synchronize(device)
    t = time.perf_counter()
    out = step()  # first call: compiles FlexAttention on the accelerator
    dev.synchronize(device)
    first_ms = (time.perf_counter() - t) * 1e3
    before = dev.allocated_memory_gb(device)
    dev.reset_peak_memory(device)
    step()
    peak = dev.peak_memory_gb(device) - before if dev.is_accelerator(device) else None
    return step, out.detach(), first_ms, peak


def attention_masks(shape: Dict) -> Dict:
    device, dtype = dev.pick_device(0), _dtype(shape)
    s, b, hq, hkv, d = shape["seq"], shape.get("batch", 1), shape["heads"], shape["kv_heads"], shape["head_dim"]
    backward = dev.is_accelerator(device)  # FlexAttention has no backward on CPU: the smoke times forward
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(s, b, h, d, generator=g).to(device, dtype).requires_grad_(backward)
               for h in (hq, hkv, hkv))
    grad = torch.randn(s, b, hq, d, generator=g).to(device, dtype)
    layouts = {"documents": (packed_documents(s, b, 0, shape["doc_lengths"]), None),
               "image-bidirectional": interleaved_images(s, b, 0, shape["image"], shape["text_run"])}
    kernels = ["sdpa"] + (["flex"] if flex_available() else [])
    rows, data, steps = [], {}, {}
    for name, (doc, span) in layouts.items():
        outs = {}
        for kernel in kernels:
            t = time.perf_counter()
            mask = build_attention_mask(doc, span, device=device, kernel=kernel)
            dev.synchronize(device)
            build_ms = (time.perf_counter() - t) * 1e3
            steps[(name, kernel)], outs[kernel], first_ms, peak = _attention_case(q, k, v, grad, mask, backward, device)
            data[f"{name}/{kernel}"] = {"build_ms": round(build_ms, 2), "first_call_ms": round(first_ms, 1),
                                        "peak_gb": None if peak is None else round(peak, 3)}
        if "flex" in outs:
            diff = (outs["flex"].float() - outs["sdpa"].float()).abs().max().item()
            data[f"{name}/flex"]["max_abs_diff_vs_sdpa"] = diff
    steps[("causal", "sdpa")], _, _, peak = _attention_case(q, k, v, grad, None, backward, device)
    data["causal/sdpa"] = {"peak_gb": None if peak is None else round(peak, 3)}
    ms = time_interleaved(steps, rounds=shape.get("rounds", 10), warmup=1, device=device)
    for (name, kernel), t in ms.items():
        data[f"{name}/{kernel}"]["ms"] = round(t, 3)
    mode = "fwd+bwd" if backward else "fwd only (CPU)"
    for name, kernel in ms:
        e = data[f"{name}/{kernel}"]
        label = {"sdpa": "SDPA dense mask" if name != "causal" else "SDPA is_causal (flash, no mask)",
                 "flex": "FlexAttention block mask"}[kernel]
        mem = f", peak {e['peak_gb']:.2f} GiB" if e.get("peak_gb") is not None else ""
        note = f"x{e['ms'] / ms[(name, 'sdpa')]:.2f} of SDPA" if kernel == "flex" else ""
        if "build_ms" in e:
            note += f"{'; ' if note else ''}mask build {e['build_ms']:.1f} ms, first call {e['first_call_ms']:.0f} ms"
        if "max_abs_diff_vs_sdpa" in e:
            note += f"; max |diff| {e['max_abs_diff_vs_sdpa']:.1e}"
        rows.append((f"{name}: {label}", f"{e['ms']:.2f} ms {mode}{mem}", note))
    data["shape"] = dict(shape, backward=backward)
    return {"rows": rows, "data": data}


def run(name: str, shape: Dict) -> Dict:
    return {"device_ceiling": device_ceiling, "grouped_gemm": grouped_gemm,
            "attention_masks": attention_masks}[name](shape)


__all__: List[str] = ["attention_masks", "device_ceiling", "grouped_gemm", "interleaved_images",
                      "packed_documents", "run"]
