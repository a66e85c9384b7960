"""Network building blocks shared by every agent.

Ensembles (the two F heads of FB, twin critics) are *batched*: an :class:`EnsembleLinear`
holds ``E`` weight matrices and evaluates them with one ``baddbmm``, so two heads cost one
kernel launch per layer instead of a Python loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied as one batched matmul.

    Input ``(E, N, in)`` (or ``(N, in)``, broadcast to every member) → output ``(E, N, out)``.
    """

    def __init__(self, in_features: int, out_features: int, ensemble: int):
        super().__init__()
        self.in_features, self.out_features, self.ensemble = in_features, out_features, ensemble
        self.weight = nn.Parameter(torch.empty(ensemble, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for k in range(self.ensemble):
            w = torch.empty(self.out_features, self.in_features)
            nn.init.orthogonal_(w)
            self.weight[k].copy_(w.T)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.ensemble, -1, -1)
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, ensemble={self.ensemble}"


class EnsembleLayerNorm(nn.Module):
    """Layer norm with separate affine parameters per ensemble member, on ``(E, N, D)``."""

    def __init__(self, dim: int, ensemble: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble, 1, dim))
        self.bias = nn.Parameter(torch.zeros(ensemble, 1, dim))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,)) * self.weight + self.bias


def mlp(
    in_dim: int,
    hidden_dims: list[int] | tuple[int, ...],
    out_dim: int | None,
    *,
    ensemble: int = 0,
    first_layernorm_tanh: bool = True,
    activation: type[nn.Module] = nn.ReLU,
    final_activation: bool = False,
) -> nn.Sequential:
    """An MLP ``in → hidden… → out``.

    The first hidden layer is followed by LayerNorm + tanh when ``first_layernorm_tanh``
    (the "ntanh" input block of the FB anchors, which keeps the input scale bounded); the
    other hidden layers by ``activation``. ``ensemble > 0`` builds ``ensemble`` independent
    copies evaluated as one batched network on ``(E, N, ·)``.
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden_dims]
    for i in range(len(hidden_dims)):
        if ensemble:
            layers.append(EnsembleLinear(dims[i], dims[i + 1], ensemble))
        else:
            layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i == 0 and first_layernorm_tanh:
            layers.append(EnsembleLayerNorm(dims[1], ensemble) if ensemble else nn.LayerNorm(dims[1]))
            layers.append(nn.Tanh())
        else:
            layers.append(activation())
    if out_dim is not None:
        last = dims[-1]
        layers.append(EnsembleLinear(last, out_dim, ensemble) if ensemble else nn.Linear(last, out_dim))
        if final_activation:
            layers.append(activation())
    net = nn.Sequential(*layers)
    net.apply(_orthogonal_init)
    return net


def _orthogonal_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.orthogonal_(m.weight)
        nn.init.zeros_(m.bias)


def project_to_sphere(z: torch.Tensor, radius: float) -> torch.Tensor:
    """``radius · z / ‖z‖`` along the last dimension."""
    return radius * F.normalize(z, dim=-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``θ̄ ← (1 − τ) θ̄ + τ θ`` for all parameters, as one foreach op."""
    tgt = [p for p in target.parameters()]
    src = [p for p in source.parameters()]
    torch._foreach_lerp_(tgt, src, tau)


def clipped_noise_action(mean: torch.Tensor, std: float, clip: float) -> torch.Tensor:
    """TD3 target smoothing: ``clamp(mean + clamp(ε·std, ±clip), ±1)`` with ε ~ N(0, I)."""
    noise = (torch.randn_like(mean) * std).clamp(-clip, clip)
    return (mean + noise).clamp(-1.0, 1.0)


class RunningMeanStd(nn.Module):
    """Running mean and variance (parallel Welford), kept as buffers so they checkpoint."""

    def __init__(self, shape: tuple[int, ...] | int, eps: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.tensor(eps))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=False)
        n = x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor, clip: float = 5.0) -> torch.Tensor:
        return ((x - self.mean) / (self.var.sqrt() + 1e-8)).clamp(-clip, clip)
