"""Megatron-Core plug-in (`pip install .[megatron]`): the MoT layer as a ModuleSpec (layer.py), the
GPTModel subclass that routes tokens and carries the plan (model.py), the TransformerConfig check and
mapping (settings.py), and universal-checkpoint conversion in both directions (checkpoint.py, names.py).

Tested versions: megatron-core 0.16.1 (CI); 0.15.3, 0.14.0 and 0.12.3 passed tests/test_megatron.py on
CPU before the hardening of issue 13, which has run on 0.16.1 only (tests/test_megatron*.py); version
differences are handled where known (layer offset signature, `model_comm_pgs` in 0.13, no process-group
collections in 0.12); setup.py allows >=0.12,<0.17. The CUDA-only tests (recompute, bf16 + CUDA RNG
tracker, dist_checkpointing I/O) have not run on a GPU yet."""
from .checkpoint import load_into_megatron, megatron_setup, megatron_to_universal, write_megatron_checkpoint
from .layer import MoTTransformerLayer, get_mot_layer_spec
from .model import MoTGPTModel, MoTPackedSeqParams
from .names import MegatronSetup
from .settings import MoTOptions, check_megatron_config, settings_from_megatron

__all__ = ["MegatronSetup", "MoTGPTModel", "MoTOptions", "MoTPackedSeqParams", "MoTTransformerLayer",
           "check_megatron_config", "get_mot_layer_spec", "load_into_megatron", "megatron_setup",
           "megatron_to_universal", "settings_from_megatron", "write_megatron_checkpoint"]
