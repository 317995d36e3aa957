"""mot_parallel: Mixture-of-Transformers (Liang et al., arXiv 2411.04996) with tensor, sequence, pipeline
and ZeRO data parallelism, on DeepSpeed and inside Megatron-Core.

Layout: config/ (typed config), distributed/ (start-up, topology, collectives), tensor_parallel/
(TP/SP primitives), testing/ (multi-process harness). See README.md for a tour.
"""
__version__ = "0.1.0"
