"""How much of a pure weight decay bf16 parameters keep, per precision, and how far a bf16 training run ends
from the float32 one: the numbers of docs/low-precision.md.

    python benchmarks/pure_decay.py [--steps 1000] [--elements 1000000] [--training]

Zero gradients, weight decay only: ``steps`` steps of theta <- (1 - lambda) theta from bf16 parameters, for
lambda = 1e-4 ... 1e-7 per step, on two sets of starting values: all 0.5 (the case of the issue that found the
loss: a power of two, where float32's grid below is twice as fine) and values spread over [0.25, 2) (no grid
alignment). Each cell is the decay kept, sum(theta_0 - theta_T) / sum(theta_0 (1 - (1 - lambda)^T)), in percent:
100 is the real-number decay. "float32 master" is precision "exact" (bit for bit a float32 run: test_precision);
"nearest" is torch's bf16 step (torch.optim.AdamW's, too); "stochastic" is the mean over ``elements`` weights.
Deterministic: the numbers do not depend on the machine (stochastic rounding is counter-based from seed 0).

``--training`` adds a 2-layer MLP (32-64-10, tanh) trained 500 steps of AdamW (weight decay 1e-4 per step, batch
64 of fixed random data) at lr 1e-3 and 1e-4: the distance of its final weights to the float32 run's, as a share
of how far the float32 run moved (|theta_T - theta_T^fp32| / |theta_T^fp32 - theta_0|), for bf16 parameters under
each precision and for the usual mixed-precision recipe (float32 masters, the forward in bf16). Every run starts
from the same float32 weights: "exact" holds them exactly (load_master_state_dict), the others their bf16
rounding. These depend on the machine's float32 matmul (its summation order), so they are quoted with the CPU
they were measured on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

try:  # run from a checkout without installing
    import decoupled
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import decoupled

from decoupled.kernels import native

PER_STEP = (1e-4, 1e-5, 1e-6, 1e-7)
PRECISIONS = ("exact", "stochastic", "nearest")


def starting_values(kind: str, elements: int) -> torch.Tensor:
    if kind == "0.5":
        return torch.full((elements,), 0.5, dtype=torch.bfloat16)
    return torch.linspace(0.25, 2.0, elements).to(torch.bfloat16)


def kept(precision: str, kind: str, per_step: float, steps: int, elements: int) -> float:
    """The decay kept, in percent of the real-number decay, by decoupled.AdamW on bf16 parameters."""
    theta0 = starting_values(kind, elements)
    param = torch.nn.Parameter(theta0.clone())
    optimizer = decoupled.AdamW([param], lr=1e-3, weight_decay=per_step, precision=precision)
    param.grad = torch.zeros_like(param)
    for _ in range(steps):
        optimizer.step()
    final = decoupled.master_weights(optimizer)[param].double()
    start = theta0.double()
    return 100 * (start - final).sum().item() / (start * (1 - (1 - per_step) ** steps)).sum().item()


def table(steps: int, elements: int) -> str:
    names = {"exact": "float32 master (exact)", "stochastic": "stochastic", "nearest": "nearest (torch's bf16)"}
    lines = [
        f"Decay kept after {steps} steps of zero gradients, % of the real-number decay (bf16 parameters):",
        "",
        "| precision | start | " + " | ".join(f"{p:g} per step" for p in PER_STEP) + " |",
        "|---|---|" + "---|" * len(PER_STEP),
    ]
    for precision in PRECISIONS:
        for kind in ("0.5", "[0.25, 2)"):
            count = elements if precision == "stochastic" else min(elements, 4096)
            cells = [f"{kept(precision, kind, per_step, steps, count):.1f}" for per_step in PER_STEP]
            lines.append(f"| {names[precision]} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mlp(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10)).to(dtype)


def _train(lr: float, precision: str | None, steps: int = 500) -> list[torch.Tensor]:
    """Final weights: precision None is float32; "recipe" float32 masters with a bf16 forward; else bf16. The
    float32 steps run on the native float32 kernel, whose operations are the bf16 masters' (so that "exact" and
    the recipe part only where the forward's copies differ: at exact ties of the rounding, 1 in 65536 values)."""
    with native.forced():
        return _train_steps(lr, precision, steps)


def _train_steps(lr: float, precision: str | None, steps: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(64 * 8, 32, generator=generator), torch.randint(0, 10, (64 * 8,), generator=generator)
    low = precision not in (None, "recipe")
    model = _mlp(torch.bfloat16 if low else torch.float32)
    extra = {"precision": precision} if low else {}
    optimizer = decoupled.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, **extra)
    if precision == "exact":  # the masters start at the float32 weights, as the recipe's do
        decoupled.load_master_state_dict(model, optimizer, _mlp(torch.float32).state_dict())
    for step in range(steps):
        batch = slice(64 * (step % 8), 64 * (step % 8 + 1))
        if precision == "recipe":  # the forward and backward on a bf16 copy; its gradients onto the masters
            copy = _mlp(torch.bfloat16)
            with torch.no_grad():
                for c, p in zip(copy.parameters(), model.parameters()):
                    c.copy_(p)
            loss = torch.nn.functional.cross_entropy(copy(x[batch].bfloat16()).float(), y[batch])
            loss.backward()
            for c, p in zip(copy.parameters(), model.parameters()):
                p.grad = c.grad.float()
        else:
            inputs = x[batch].to(next(model.parameters()).dtype)
            torch.nn.functional.cross_entropy(model(inputs).float(), y[batch]).backward()
        optimizer.step()
        optimizer.zero_grad()
    return [w.float() for w in decoupled.master_weights(optimizer).values()]


def training_table() -> str:
    initial = [p.detach().float() for p in _mlp(torch.float32).parameters()]
    rows = {"recipe": "float32 masters, bf16 forward (the usual recipe)", "exact": "bf16, precision='exact'",
            "stochastic": "bf16, precision='stochastic'", "nearest": "bf16, precision='nearest' (torch's)"}  # fmt: skip
    lines = [
        "Distance of the final weights to the float32 run, as a share of how far the float32 run moved:",
        "",
        "| run | lr 1e-3 | lr 1e-4 |",
        "|---|---|---|",
    ]
    references = {lr: _train(lr, None) for lr in (1e-3, 1e-4)}
    for precision, name in rows.items():
        cells = []
        for lr, reference in references.items():
            final = _train(lr, precision)
            off = sum((a - b).square().sum() for a, b in zip(final, reference)).sqrt()
            moved = sum((b - a).square().sum() for a, b in zip(initial, reference)).sqrt()
            cells.append(f"{(off / moved).item():.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--elements", type=int, default=1_000_000, help="weights of the stochastic runs")
    parser.add_argument("--training", action="store_true", help="also the 2-layer MLP's distance to float32")
    args = parser.parse_args(argv)
    print(table(args.steps, args.elements))
    if args.training:
        print()
        print(training_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
