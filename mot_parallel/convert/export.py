"""A universal checkpoint -> one safetensors file + config, for inference and evaluation elsewhere.

    <out>/model.safetensors   every parameter under its canonical name, in the chosen dtype
    <out>/config.yaml         the model's config (mot_parallel.load_pretrained reads it)
    <out>/config.json         the model section as JSON, for tools outside this stack
"""
from __future__ import annotations

import dataclasses
import json
import os

from safetensors.torch import save_file

from ..config import dump_config
from ..model.settings import DTYPES
from ..outputs import EXPORT
from .universal import Universal, fresh_temp_dir, move_into_place


def export_universal(path: str, out: str, dtype: str = "fp32") -> str:
    uni = Universal(path)
    tmp = fresh_temp_dir(out, EXPORT)
    tensors = {n: uni.get(n).to(DTYPES[dtype]).contiguous() for n in uni.names()}
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "mot_parallel.export/1"})
    dump_config(uni.config, os.path.join(tmp, "config.yaml"))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump({"model": dataclasses.asdict(uni.config.model), "dtype": dtype, "step": uni.meta.get("step")},
                  f, indent=1)
    move_into_place(tmp, out)
    return out
