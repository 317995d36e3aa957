"""Parameters and FLOPs per token of a config: dense baseline vs the config's MoT vs the FFN-only ablation.

    python tools/flops.py --config configs/mot_7b_chameleon.yaml [--json] [key=value ...]

FLOPs per token are the same for all three (each token uses exactly one copy of every untied part);
parameters grow by (M - 1) x the untied parts per layer. The paper (§6.1) counts 7(M-1)D^2 per layer
with |FFN| = 3D^2 (D x D projections): printed beside the count for this config's actual FFN and GQA.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.cli import checked_config  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg, _ = checked_config(args.config, args.overrides)
    from mot_parallel.flops import forward_flops_per_token, param_counts, training_flops_per_token  # torch
    from mot_parallel.model import ModelSettings
    mot = ModelSettings.from_config(cfg)
    variants = {"dense": mot.with_(untie=frozenset(), untie_final_norm=False), "mot": mot,
                "ffn_only": mot.with_(untie=frozenset({"ffn"}))}
    seq, M, D = cfg.model.max_seq_len, mot.num_modalities, mot.hidden_size
    rows = {}
    for name, s in variants.items():
        c = param_counts(s)
        f = forward_flops_per_token(s, seq)
        rows[name] = {"untie": sorted(s.untie), "total_params": c["total"], "active_params": c["active"],
                      "layer_params": c["layer_total"], "extra_params_per_layer_vs_dense": c["mot_extra_per_layer"],
                      "forward_flops_per_token": f["total"], "train_flops_per_token": training_flops_per_token(s, seq)}
    paper = 7 * (M - 1) * D * D
    result = {"config": args.config, "modalities": M, "hidden": D, "seq_len": seq, "variants": rows,
              "paper_extra_per_layer_7_M-1_D2": paper}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{args.config}: {M} modalities, D={D}, {mot.num_layers} layers, seq {seq}")
    print(f"{'variant':9} {'untie':28} {'total params':>14} {'active params':>14} {'extra/layer':>12} "
          f"{'fwd FLOP/tok':>14} {'train FLOP/tok':>15}")
    for name, r in rows.items():
        print(f"{name:9} {','.join(r['untie']) or '-':28} {r['total_params']:>14,} {r['active_params']:>14,} "
              f"{r['extra_params_per_layer_vs_dense']:>12,} {r['forward_flops_per_token']:>14,.0f} "
              f"{r['train_flops_per_token']:>15,.0f}")
    print(f"paper's 7(M-1)D^2 per layer (|FFN| = 3D^2, no GQA): {paper:,}; this config's count above uses its "
          f"FFN of {mot.ffn_hidden_size} and {mot.num_kv_heads} KV heads")


if __name__ == "__main__":
    main()
