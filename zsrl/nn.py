"""Network building blocks shared by every agent.

Ensembles (the two F heads of FB, twin critics) are *batched*: an :class:`EnsembleLinear`
holds ``E`` weight matrices and evaluates them with one ``baddbmm``, so two heads cost one
kernel launch per layer instead of a Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zsrl import distributed


def _activation_from_output(
    forward: Callable[[torch.Tensor], torch.Tensor],
    backward_from_output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    name: str,
) -> type[torch.autograd.Function]:
    """An autograd function ``y = forward(x)`` whose backward reads only its output:
    ``∂L/∂x = backward_from_output(∂L/∂y, y)``; it saves ``y`` and nothing else."""

    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(output)

    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return backward_from_output(grad, y)

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
    })


#: ``y = 2σ(2x) − 1`` with tanh's backward ``g (1 − y²)`` as one fused kernel
_SigmoidTanh = _activation_from_output(
    lambda x: torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0), torch.ops.aten.tanh_backward, "_SigmoidTanh"
)
#: ``y = max(x, 0)`` with the backward ``g · sign(y)``
_OutputGradReLU = _activation_from_output(lambda x: torch.relu(x), lambda grad, y: grad * torch.sign(y), "_OutputGradReLU")


class Tanh(nn.Module):
    """``tanh``, computed on CPU as ``2σ(2x) − 1`` (the same function, within a few ulps of 1).

    PyTorch's CPU ``tanh`` kernel is several times slower than its ``sigmoid``
    (docs/results.md, where the CPU update's time goes); CUDA keeps the native kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return _SigmoidTanh.apply(x)
        return torch.tanh(x)


class ReLU(nn.Module):
    """``max(x, 0)``; compiled for a CPU, its backward reads the output: ``g · sign(y)``.

    The same function and gradient as ``nn.ReLU``. Inside ``torch.compile`` on a CPU the
    native op makes inductor save a boolean ``y ≤ 0`` mask for the backward pass, and its
    vectorised C++ stores bool tensors much slower than float ones; ``g · sign(y)`` saves
    nothing new (``y`` feeds the next layer's weight gradient anyway). Eagerly and on CUDA it
    is ``torch.relu``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.compiler.is_compiling():
            return _OutputGradReLU.apply(x)
        return torch.relu(x)


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
        return torch.addcmul(self.bias, F.layer_norm(x, (self.dim,)), self.weight)


def mlp(
    in_dim: int,
    hidden_dims: list[int] | tuple[int, ...],
    out_dim: int | None,
    *,
    ensemble: int = 0,
    first_layernorm_tanh: bool = True,
    activation: type[nn.Module] = ReLU,
    hidden_layernorm: bool = False,
    final_activation: bool = False,
) -> nn.Sequential:
    """An MLP ``in → hidden… → out``.

    The first hidden layer is followed by LayerNorm + tanh when ``first_layernorm_tanh``
    (the "ntanh" input block of the FB anchors, which keeps the input scale bounded); the
    other hidden layers by ``activation``, preceded by LayerNorm when ``hidden_layernorm``
    (``first_layernorm_tanh=False, activation=nn.Mish, hidden_layernorm=True`` is the
    LayerNorm + mish block of jaxrl-style IQL code, e.g. FRE's reference). ``ensemble > 0``
    builds ``ensemble`` independent copies evaluated as one batched network on ``(E, N, ·)``.
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden_dims]
    for i in range(len(hidden_dims)):
        if ensemble:
            layers.append(EnsembleLinear(dims[i], dims[i + 1], ensemble))
        else:
            layers.append(nn.Linear(dims[i], dims[i + 1]))
        norm = EnsembleLayerNorm(dims[i + 1], ensemble) if ensemble else nn.LayerNorm(dims[i + 1])
        if i == 0 and first_layernorm_tanh:
            layers += [norm, Tanh()]
        else:
            layers += [norm, activation()] if hidden_layernorm else [activation()]
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


def call_frozen(module: nn.Module, *args: Any) -> Any:
    """``module(*args)`` with its parameters detached: gradients reach the inputs only.

    Used where a loss differentiates *through* a network into another one (the actor's
    ``−F(s, π(s), z)ᵀz``): the frozen network's weight gradients are never computed —
    that is about one forward pass of work saved, also inside a compiled graph, where
    ``backward(inputs=…)`` would not prune them.
    """
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, args)


def optimizer_step(loss: torch.Tensor, *opts: torch.optim.Optimizer, clip_grad_norm: float = 0.0) -> None:
    """``zero_grad → backward → step`` of every optimiser in ``opts`` on one ``loss``.

    Several optimisers share one backward pass when their parameters are disjoint and
    ``loss`` is the sum of their losses (each parameter's gradient is then that of its own
    term). With ``clip_grad_norm`` > 0 the gradient norm of each parameter group (one network:
    FB's F and B are two groups of one optimiser) is clipped on its own, as metamotivo clips each
    network. Under data parallelism the gradients are averaged over the ranks first
    (:func:`zsrl.distributed.average_gradients`), so clipping and the step see the gradient
    of the global batch.
    """
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    if distributed.active():
        distributed.average_gradients([p for opt in opts for g in opt.param_groups for p in g["params"]])
    for opt in opts:
        if clip_grad_norm > 0:
            for group in opt.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], clip_grad_norm)
        opt.step()


def q_scale(q: torch.Tensor) -> torch.Tensor:
    """TD3+BC's normaliser of the actor's objective (Fujimoto & Gu, 2021): ``mean |Q|`` over the
    batch — the global batch under data parallelism — detached and floored at 1e-6."""
    return distributed.global_mean(q.abs().mean().detach()).clamp_min(1e-6)


def make_adam(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], device: torch.device, **kwargs: Any
) -> torch.optim.Adam:
    """Adam with the fast implementation for ``device``: ``fused=True`` (the whole update
    as one native op instead of a ``foreach`` op per term) on CPU and CUDA, and on CUDA
    also ``capturable=True`` (step counters on the device, so the step can be recorded in a
    CUDA graph). Elsewhere the default (foreach) implementation. The maths is Adam's either
    way (same steps up to float rounding).
    """
    kind = torch.device(device).type
    if kind in ("cpu", "cuda"):
        kwargs.setdefault("fused", True)
    if kind == "cuda":
        kwargs.setdefault("capturable", True)
    return torch.optim.Adam(params, **kwargs)


def restore_fast_adam(opt: torch.optim.Optimizer, flags: list[dict[str, Any]]) -> None:
    """After ``opt.load_state_dict`` of a state saved on another device, put back this
    device's ``fused``/``capturable``/``foreach`` choice of each group (``flags``, as
    :func:`make_adam` made them; loading copies the saved groups'), with the step counters
    where that choice keeps them (on the device when fused or capturable, else on the CPU)."""
    for group, group_flags in zip(opt.param_groups, flags):
        group.update(group_flags)
        on_device = bool(group_flags.get("fused") or group_flags.get("capturable"))
        for p in group["params"]:
            state = opt.state.get(p)
            if state and isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(device=p.device if on_device else "cpu", dtype=torch.float32)


def expectile_loss(diff: torch.Tensor, expectile: float, sign: torch.Tensor | None = None) -> torch.Tensor:
    """``mean |τ − 1(u < 0)| · diff²`` (IQL's asymmetric L2; τ = ``expectile``).

    ``u`` is ``diff`` itself unless ``sign`` is given (broadcast against ``diff``): HILP
    weighs each head's error by the sign of a shared advantage instead.
    """
    weight = torch.where((diff if sign is None else sign) < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def kl_standard_normal(mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``KL(N(μ, σ²) ‖ N(0, I))`` per dimension, averaged over batch and dimensions:
    ``½ mean(μ² + σ² − 1 − 2 log σ)``."""
    return 0.5 * (mu.pow(2) + torch.exp(2 * log_std) - 1.0 - 2 * log_std).mean()


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, diag σ²)`` summed over the last dimension."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def clipped_noise_action(mean: torch.Tensor, std: float, clip: float) -> torch.Tensor:
    """TD3 target smoothing: ``clamp(mean + clamp(ε·std, ±clip), ±1)`` with ε ~ N(0, I)."""
    noise = (torch.randn_like(mean) * std).clamp(-clip, clip)
    return (mean + noise).clamp(-1.0, 1.0)


class Standardize(nn.Module):
    """``clamp((x − μ) / σ, ±clip)`` with ``μ, σ`` buffers fitted once to data (:meth:`fit`).

    Before :meth:`fit` it is the identity (``μ = 0, σ = 1``). ``σ`` is floored at ``min_std``
    so a constant coordinate maps to 0 rather than dividing by zero.
    """

    def __init__(self, dim: int, clip: float = 10.0, min_std: float = 1e-4):
        super().__init__()
        self.clip, self.min_std = clip, min_std
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set ``μ, σ`` to the mean and standard deviation of ``x`` ``(N, dim)``."""
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(self.min_std))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − μ) / σ`` without the clamp (e.g. for distances)."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(x).clamp(-self.clip, self.clip)


def accept_renamed_keys(module: nn.Module, renamed: dict[str, str]) -> None:
    """Let ``module.load_state_dict`` read state saved under old key names: ``renamed`` maps
    each old name (relative to ``module``) to its new one. Checkpoints written before a
    refactor keep loading; new ones are saved under the new names only."""

    def hook(mod: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
        for old, new in renamed.items():
            if prefix + old in state and prefix + new not in state:
                state[prefix + new] = state.pop(prefix + old)

    module.register_load_state_dict_pre_hook(hook)


@torch.no_grad()
def fit_standardizers(modules: Iterable[nn.Module], x: torch.Tensor) -> None:
    """Fit every :class:`Standardize` inside ``modules`` (online and target copies alike) to ``x``."""
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, Standardize):
                sub.fit(x)


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
