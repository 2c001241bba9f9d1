"""The software and CPU kernel path a training ran on, recorded next to its bytes."""

from __future__ import annotations

import os

import numpy as np
import torch


def kernel_platform() -> dict[str, str]:
    """What a bit-for-bit rebuild must share besides the recipe: libraries and the CPU kernel path.

    One thread fixes the reduction order, but torch and oneDNN pick vectorised kernels by the CPU's
    instruction set (AVX2, AVX-512, ...), and different kernels round differently: a 60-step VAE stage gave
    four different files for four kernel settings on one machine. `ATEN_CPU_CAPABILITY` and
    `ONEDNN_MAX_CPU_ISA` select them.
    """
    import diffusers
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "unset"),
    }
