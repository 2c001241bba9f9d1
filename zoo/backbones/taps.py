"""Named feature taps: forward hooks on any module path of a network, collected per forward call and thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

# A site "path:query" taps the query projection (`to_q`) of the attention module at `path`.
_SUFFIX_MODULES = {"query": "to_q", "key": "to_k", "value": "to_v"}


def resolve_site(root: nn.Module, site: str) -> nn.Module:
    """The submodule named by `site`
    ("up_blocks.3", "up_blocks.1.attentions.0.transformer_blocks.0.attn2:query")."""
    path, _, suffix = site.partition(":")
    if suffix:
        if suffix not in _SUFFIX_MODULES:
            raise ValueError(
                f"feature site {site!r}: unknown suffix {suffix!r}; expected {sorted(_SUFFIX_MODULES)}"
            )
        path = f"{path}.{_SUFFIX_MODULES[suffix]}"
    try:
        return root.get_submodule(path)
    except AttributeError as error:
        raise ValueError(f"feature site {site!r}: no module at {path!r} ({error})") from None


def _first_tensor(output: object) -> torch.Tensor:
    # Down blocks return (hidden_states, residuals); the tapped feature is the hidden state.
    while isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"tapped module returned {type(output).__name__}, not a tensor")
    return output


class FeatureTaps:
    """Forward hooks on named sites; `captured` holds each site's output of the latest forward in this thread.

    Thread-safe: captures are stored per thread, so two threads running the same network
    (two predictors sharing one UNet, or one predictor called from two threads) each get exactly the features
    of their own forward, never the other's. Under gradient checkpointing an inner module runs again during
    backward; the hook then overwrites the capture with the recomputed (numerically identical) tensor, which
    is harmless because callers consume the features before calling backward.
    """

    def __init__(self, root: nn.Module, sites: Mapping[str, str]):
        self.sites = dict(sites)  # name -> site
        self._local = threading.local()  # .captured: name -> tensor, one dict per thread
        self._handles = [
            resolve_site(root, site).register_forward_hook(self._hook(name))
            for name, site in self.sites.items()
        ]

    @property
    def captured(self) -> dict[str, torch.Tensor]:
        """This thread's captured tensors (site name -> output)."""
        if not hasattr(self._local, "captured"):
            self._local.captured = {}
        return self._local.captured

    def _hook(self, name: str):
        def store(_module: nn.Module, _inputs: object, output: object) -> None:
            # Runs in the thread of the forward that produced `output`, so it lands in that thread's dict.
            self.captured[name] = _first_tensor(output)

        return store

    def pop(self) -> dict[str, torch.Tensor]:
        """Return this thread's captured tensors and clear them; raises if a site did not run."""
        captured = self.captured
        missing = [name for name in self.sites if name not in captured]
        if missing:
            raise RuntimeError(f"feature sites {missing} did not run in the last forward")
        self._local.captured = {}
        return captured

    def remove(self) -> None:
        """Unregister every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def tapped(root: nn.Module, sites: Mapping[str, str]) -> Iterator[FeatureTaps]:
    """Context manager form of FeatureTaps that always removes its hooks."""
    taps = FeatureTaps(root, sites)
    try:
        yield taps
    finally:
        taps.remove()
