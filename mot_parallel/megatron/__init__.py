"""Megatron-Core plug-in (`pip install .[megatron]`): the MoT layer as a ModuleSpec (layer.py) and the
GPTModel subclass that routes tokens and carries the plan (model.py).

Tested versions: megatron-core 0.16.1 (CI), 0.15.3, 0.14.0 and 0.12.3 (tests/test_megatron.py and
tests/test_convert.py pass on CPU with each; setup.py allows >=0.12,<0.17). The CUDA-only tests
(recompute, bf16 + CUDA RNG tracker, dist_checkpointing I/O) have not run on a GPU yet."""
from .layer import MoTOptions, MoTTransformerLayer, get_mot_layer_spec, settings_from_megatron
from .model import MoTGPTModel, MoTPackedSeqParams

__all__ = ["MoTGPTModel", "MoTOptions", "MoTPackedSeqParams", "MoTTransformerLayer", "get_mot_layer_spec",
           "settings_from_megatron"]
