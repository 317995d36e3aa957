"""mot_parallel: Mixture-of-Transformers pretraining with tensor, sequence, pipeline and ZeRO data parallelism.

torch is a *range*: a GPU cluster keeps its own CUDA build; `launch/setup_env.sh` installs the CPU wheel
(torch==2.13.0) only when no torch is importable. The versions CI tests together are pinned in
tests/constraints.txt (`pip install -e .[megatron] -c tests/constraints.txt`); README.md's table lists both.
"""
from setuptools import find_packages, setup

setup(
    name="mot_parallel",
    version="0.1.0",
    description="Mixture-of-Transformers (arXiv 2411.04996) with TP/SP/PP/ZeRO on DeepSpeed and Megatron-Core",
    packages=find_packages(include=["mot_parallel", "mot_parallel.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<3",
        "deepspeed>=0.15",
        "pyyaml>=6",
        "tensorboard>=2.14",
        "numpy",
        # checkpoint conversion and export: HF checkpoints come as safetensors, and it loads without
        # pickle (safe for downloaded files) and memory-mapped
        "safetensors>=0.4",
    ],
    extras_require={
        "mpi": ["mpi4py>=3.1"],
        # the releases the plug-in is tested with (mot_parallel/megatron/version.py checks it at import; CI runs
        # 0.16.1, the newest pip offers Python 3.11, and 0.19.2 in `tests/run.sh --megatron 0.19.2`)
        "megatron": ["megatron-core>=0.16,<0.20"],
        # transformers: the hf-to-mot conversion tests build a tiny Llama (test-only).
        # scikit-learn, tokenizers: tests/tools/test_build_real_corpus.py builds a tiny real-data corpus (see "study").
        # diffusers, Pillow: tests/tools/test_preprocess_images.py builds a tiny VAE and PNGs (see "transfusion").
        # pyarrow: tests/tools/test_preprocess_text.py writes a parquet file (see "data").
        "dev": ["pytest>=7", "matplotlib", "transformers>=4.40", "scikit-learn>=1.0", "tokenizers>=0.15",
                "diffusers>=0.30", "Pillow>=9.1", "pyarrow>=14"],
        # the Transfusion setting's images (tools/preprocess_data.py --vae, images.decode_patches): diffusers'
        # AutoencoderKL is THE reference VAE implementation (the SD/SDXL/SD3/Flux VAEs load as they were
        # trained, latent normalisation included); Pillow is the standard image reader (every format, EXIF).
        "transfusion": ["diffusers>=0.30", "Pillow>=9.1"],
        # the real-data corpus (tools/build_real_corpus.py): scikit-learn ships the 1,797 handwritten-digit
        # scans (load_digits, no download); tokenizers is HF's Rust BPE trainer, fast, deterministic as used,
        # and its tokenizer.json decodes text ids anywhere. Speech also needs the espeak-ng program (apt).
        "study": ["scikit-learn>=1.0", "tokenizers>=0.15"],
        # your own data (tools/preprocess_data.py --tokenizer, parquet input, --image-tokenizer): tokenizers and
        # transformers load a Hugging Face tokenizer exactly as it was trained (tokenizer.json, AutoTokenizer
        # directories); pyarrow is THE parquet reader (streams row groups in bounded memory, every encoding and
        # compression parquet writers use; a hand-written reader would cover a fraction); Pillow and diffusers
        # read images and run a VQModel image tokenizer. Each is imported only by the path that needs it.
        "data": ["tokenizers>=0.15", "transformers>=4.40", "pyarrow>=14", "Pillow>=9.1", "diffusers>=0.30"],
    },
)
