"""zsrl — zero-shot reinforcement learning in PyTorch.

Reward-free pretraining of forward-backward (FB), FRE and related agents on offline
datasets, prompted at test time with reward samples or goals.

The Python API (:mod:`zsrl.api`): ``zsrl.collection``, ``zsrl.load_dataset``, ``zsrl.training``
(with ``zsrl.Callback``), ``zsrl.load`` and ``zsrl.evaluation``; a loaded model's ``prompt``
gives a policy. They are imported on first use, so ``import zsrl.errors`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("Callback", "Run", "collect", "evaluate", "export_minari", "import_dataset", "load", "load_dataset", "train")
__all__ = ["Callback", "Run", "__version__", "collect", "evaluate", "export_minari", "import_dataset", "load",
           "load_dataset", "train"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from zsrl import api

        return getattr(api, name)
    raise AttributeError(f"module 'zsrl' has no attribute {name!r}")
