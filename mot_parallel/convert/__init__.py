"""Checkpoint conversion: the universal (unsharded, layout-independent) format, engine export/import for
resharding across TP/PP/DP, Hugging Face Llama/Qwen2 upcycling and export back, and single-file export."""
from .engine_io import export_engine, import_engine, load_universal_into_model
from .export import export_universal
from .hf import ConversionError, hf_to_universal
from .hf_export import export_to_hf
from .universal import Universal, is_universal

__all__ = ["ConversionError", "Universal", "export_engine", "export_to_hf", "export_universal", "hf_to_universal",
           "import_engine", "is_universal", "load_universal_into_model"]
