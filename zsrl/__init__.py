"""zsrl — zero-shot reinforcement learning in PyTorch.

Reward-free pretraining of forward-backward (FB), FRE and related agents on offline
datasets, prompted at test time with reward samples or goals.

Pipeline: ``zsrl.envs`` (domains) → ``zsrl.collect`` → ``zsrl.data`` (datasets) →
``zsrl.train`` (agents from ``zsrl.agents``) → ``zsrl.evaluate``.
"""

__version__ = "0.1.0"
