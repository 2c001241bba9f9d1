"""The software and CPU kernel path a training ran on, recorded next to its bytes; how to select it again."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

# The environment variables that select the kernels: read once, when torch (ATen) and oneDNN start.
ATEN_VARIABLE = "ATEN_CPU_CAPABILITY"
ONEDNN_VARIABLE = "ONEDNN_MAX_CPU_ISA"


def kernel_platform() -> dict[str, str]:
    """What a bit-for-bit rebuild must share besides the recipe: libraries and the CPU kernel path.

    One thread fixes the reduction order, but torch and oneDNN pick vectorised kernels by the CPU's
    instruction set (AVX2, AVX-512, ...), and different kernels round differently: a 60-step VAE stage gave
    four different files for four kernel settings on one machine. `ATEN_CPU_CAPABILITY` and
    `ONEDNN_MAX_CPU_ISA` select them (see `kernel_environment`).
    """
    import diffusers
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get(ONEDNN_VARIABLE, "unset"),
    }


def kernel_environment(platform: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that make a new process run the kernels of a recorded `platform`.

    They take effect only if set before torch is imported. A recorded oneDNN ISA of "unset" means oneDNN
    chose by the CPU it ran on: nothing to set, and only a CPU of the same ISA family reproduces it.
    """
    environment = {ATEN_VARIABLE: platform["cpu_capability"].lower()}
    if platform.get("onednn_max_cpu_isa", "unset") != "unset":
        environment[ONEDNN_VARIABLE] = platform["onednn_max_cpu_isa"]
    return environment


def platform_differences(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """'name: recorded X, here Y' for every recorded field this process does not share."""
    return [
        f"{name}: recorded {value!r}, here {current.get(name)!r}"
        for name, value in recorded.items()
        if current.get(name) != value
    ]


def recorded_platform(folder: str | Path) -> dict[str, str]:
    """The kernel platform in `folder`/recipe.json (the stage that wrote its last bytes)."""
    path = Path(folder) / "recipe.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no recipe.json to read a kernel platform from")
    record = json.loads(path.read_text())
    if not isinstance(record.get("platform"), dict):
        raise ValueError(f"{path}: no 'platform' record")
    return record["platform"]


if __name__ == "__main__":
    # `env $(python -m zoo.utils.platform FOLDER) COMMAND` runs COMMAND on FOLDER's recorded kernels.
    import sys

    environment = kernel_environment(recorded_platform(sys.argv[1]))
    print(" ".join(f"{name}={value}" for name, value in environment.items()))
