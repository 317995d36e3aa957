"""Megatron-Core plug-in (`pip install .[megatron]`): the MoT layer as a ModuleSpec (layer.py), the
GPTModel subclass that routes tokens and carries the plan (model.py), the keywords of Megatron's calls to
both, checked in one place (call_keywords.py), the TransformerConfig check and mapping (settings.py), and universal-checkpoint conversion in both directions (checkpoint.py, names.py).

Tested versions (version.py, checked at import): megatron-core 0.16.x to 0.19.x; CI runs tests/megatron/test_*.py
on 0.16.1 and on 0.19.2 (`tests/run.sh --megatron 0.19.2`). The CUDA-only tests (recompute, bf16 + CUDA RNG
tracker, dist_checkpointing I/O) run in the GPU check (docs/gpu_check.md)."""
from megatron.core import __version__ as _megatron_version

from .version import check_megatron_version

check_megatron_version(_megatron_version)

from .checkpoint import (load_into_megatron, megatron_setup, megatron_to_universal,  # noqa: E402
                         write_megatron_checkpoint)
from .layer import MoTTransformerLayer, get_mot_layer_spec  # noqa: E402
from .model import MoTGPTModel, MoTPackedSeqParams  # noqa: E402
from .names import MegatronSetup  # noqa: E402
from .settings import MoTOptions, check_megatron_config, settings_from_megatron  # noqa: E402

__all__ = ["MegatronSetup", "MoTGPTModel", "MoTOptions", "MoTPackedSeqParams", "MoTTransformerLayer",
           "check_megatron_config", "get_mot_layer_spec", "load_into_megatron", "megatron_setup",
           "megatron_to_universal", "settings_from_megatron", "write_megatron_checkpoint"]
