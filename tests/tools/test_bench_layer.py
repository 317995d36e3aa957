"""tools/bench_layer.py: the naive baseline computes the same function as MoTLayer (so the comparison is
fair), and the tool's JSON has the documented schema (tiny shapes; speed itself is not asserted here)."""
import json
import os
import subprocess
import sys

import torch

from mot_parallel.studies.benchmarks.naive_mot import NaiveMoTLayer
from mot_parallel.model import ModelSettings, MoTLayer, build_routing_plan
from mot_parallel.model.rope import rope_cos_sin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_naive_equals_mot_layer():
    s = ModelSettings(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, ffn_hidden_size=48, vocab_size=1,
                      vocab_multiple=1, modalities=("a", "b", "c"), document_masking=False)
    layer = MoTLayer(s, 0)
    naive = NaiveMoTLayer(s).load_from(layer)
    S, B = 10, 2
    x = torch.randn(S, B, 32)
    mods = torch.randint(0, 3, (S, B), generator=torch.Generator().manual_seed(0))
    plan = build_routing_plan(mods, 3)
    rope = rope_cos_sin(None, S, B, s.head_dim, s.rope_theta, torch.device("cpu"))
    ours = plan.to_sequence(layer(plan.to_grouped(x.view(-1, 32)).view(S, B, 32), plan, rope).view(-1, 32))
    assert (ours.view(S, B, 32) - naive(x, mods)).abs().max() < 1e-5


def test_bench_layer_json_schema():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_layer.py"), "--hidden", "64",
                          "--heads", "4", "--ffn", "96", "--seq", "64", "--rounds", "1", "--warmup", "0", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    variants = {(r["variant"], r["modalities"]) for r in data["results"]}
    assert variants == {("dense", 1), ("mot", 2), ("mot", 3), ("naive", 2), ("naive", 3)}
    for r in data["results"]:
        assert r["ms"] > 0 and r["ratio_to_dense"] > 0 and r["params"] > 0 and r["flops_per_token"] > 0
        assert abs(r["tflops"] - 3 * r["flops_per_token"] * 64 / (r["ms"] / 1e3) / 1e12) <= 0.01 + 0.01 * r["tflops"]
        assert r["of_peak"] is None  # CPU: no peak in the table
    dense = next(r for r in data["results"] if r["variant"] == "dense")
    assert dense["ratio_to_dense"] == 1.0
    mot3 = next(r for r in data["results"] if r["variant"] == "mot" and r["modalities"] == 3)
    assert mot3["params"] == 3 * dense["params"] and mot3["flops_per_token"] == dense["flops_per_token"]
    assert data["shape"]["seq"] == 64
