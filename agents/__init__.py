"""Zero-shot agents. Each module holds one method; ``base`` holds the shared interface.

Agents are found by name through :mod:`zsrl.registry` (``fb``, ``fre``, ``hilp``,
``td3``, ``vcfb``, ``mcfb``), so importing this package does not import every method.
"""

from zsrl.agents.base import Agent, CheckpointError, Model

__all__ = ["Agent", "CheckpointError", "Model"]
