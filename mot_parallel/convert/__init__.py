"""Checkpoint conversion: the universal (unsharded, layout-independent) format, engine export/import for
resharding across TP/PP/DP, Hugging Face Llama upcycling, and single-file export."""
from .engine_io import export_engine, import_engine, load_universal_into_model
from .export import export_universal
from .hf import hf_to_universal
from .universal import Universal, is_universal

__all__ = ["Universal", "export_engine", "export_universal", "hf_to_universal", "import_engine", "is_universal",
           "load_universal_into_model"]
