"""tools/profile_step.py: a trace is written and the category times add up to the measured step time
within 10%; tools/flops.py: MoT's FLOPs per token equal dense, and its extra parameters per layer are
the paper's 7(M-1)D^2 (plus the norm weights) when the FFN is D x D."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["model.hidden_size=128", "model.num_layers=2", "model.max_seq_len=128", "train.micro_batch_size=2",
        "train.global_batch_size=2", "data.demo_documents=300"]


def test_profile_categories_add_up_to_the_step(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "profile_step.py"), "--config",
                          os.path.join(ROOT, "configs", "demo_cpu.yaml"), "--steps", "2", "--warmup", "1",
                          "--out", str(tmp_path), "--json"] + TINY, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout[out.stdout.index("{"):])
    assert 0.9 <= r["sum_over_measured"] <= 1.1, r
    cats = r["categories_s"]
    assert cats["gemm"] > 0 and cats["attention"] > 0 and cats["routing"] > 0 and cats["optimizer"] > 0
    assert cats["gemm"] > cats["routing"]
    trace = json.load(open(tmp_path / "trace_rank0.json"))
    assert any("mot/step" in e.get("name", "") for e in trace["traceEvents"])


def test_flops_tool_matches_the_paper():
    D = 256
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "flops.py"), "--config",
                          os.path.join(ROOT, "configs", "demo_cpu.yaml"), "--json", f"model.hidden_size={D}",
                          f"model.ffn_hidden_size={D}", "model.num_heads=4", "model.qk_norm=false"],
                         capture_output=True, text=True, timeout=120)  # the paper's count has no QK-norm
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout[out.stdout.index("{"):])
    v, M = r["variants"], r["modalities"]
    assert v["mot"]["forward_flops_per_token"] == v["dense"]["forward_flops_per_token"] == v["ffn_only"]["forward_flops_per_token"]
    assert v["mot"]["active_params"] == v["dense"]["active_params"]
    assert v["mot"]["extra_params_per_layer_vs_dense"] == 7 * (M - 1) * D * D + 2 * D * (M - 1)
    assert r["paper_extra_per_layer_7_M-1_D2"] == 7 * (M - 1) * D * D
