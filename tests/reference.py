"""Plain reference implementations of Algorithms 1 and 2 of Loshchilov & Hutter (ICLR 2019), from PAPER.md.

Obvious per-tensor code in float64, written from the paper's pseudo-code and nothing else: no kernels, no
foreach, no in-place tricks. The tests compare every optimizer path of the package against these, both the
parameters and every state tensor.

Conventions for the decay of one step (PAPER.md, "The schedule multiplier and the conventions in use today"):
    decoupled: theta -= eta_t * lambda * theta_{t-1},  eta_t = lr_t / alpha
    lr:        theta -= lr_t * lambda * theta_{t-1}
    constant:  theta -= lambda * theta_{t-1}
    corrected: theta -= eta_t^2 * lambda * theta_{t-1}        (Defazio et al. 2025, AdamC / SGDC)
    l2:        g_t += lambda * theta_{t-1}
Cautious weight decay (Chen et al. 2025), for every convention but l2: the decay term is multiplied by
1[u_t * theta_{t-1} >= 0], u_t the update direction (AdamW: mhat / (sqrt(vhat) + eps); SGDW: the vector
subtracted, m_t or, with Nesterov, beta1 m_t + eta_t alpha g_t).
Complex parameters are treated as pairs of reals, as torch.optim does.
"""

from __future__ import annotations

import math

import torch


def schedule_multiplier(lr: float, alpha: float) -> float:
    """eta_t: a scheduler sets lr_t = eta_t * alpha."""
    return lr / alpha


def decay_of_step(decay: str, lr: float, alpha: float, weight_decay: float) -> float:
    """The coefficient c of theta_t = theta_{t-1} - update - c * theta_{t-1} (0 for L2)."""
    return {
        "decoupled": schedule_multiplier(lr, alpha) * weight_decay,
        "lr": lr * weight_decay,
        "constant": weight_decay,
        "corrected": schedule_multiplier(lr, alpha) ** 2 * weight_decay,
        "l2": 0.0,
    }[decay]


def cautious_mask(update: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """1[u_t * theta_{t-1} >= 0], straight from the formula."""
    return (update * theta >= 0).to(theta.dtype)


def as_real(tensor: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


class ReferenceAdam:
    """Algorithm 2 (Adam with L2 / AdamW), one tensor at a time, in float64.

    Per parameter with a gradient (parameters whose gradient is None are skipped entirely):
        g_t   = grad  (negated when maximizing)          [+ lambda * theta_{t-1}  with L2]
        m_t   = beta1 m_{t-1} + (1 - beta1) g_t
        v_t   = beta2 v_{t-1} + (1 - beta2) g_t^2
        mhat  = m_t / (1 - beta1^t);  vhat = v_t / (1 - beta2^t)   (v_t replaced by max_{s<=t} v_s with amsgrad)
        theta_t = theta_{t-1} - eta_t * (alpha * mhat / (sqrt(vhat) + eps) + lambda * theta_{t-1})   (decoupled)
    """

    def __init__(self, *, betas=(0.9, 0.999), eps=1e-8, amsgrad=False, maximize=False, cautious=False):
        self.beta1, self.beta2 = betas
        self.eps, self.amsgrad, self.maximize, self.cautious = eps, amsgrad, maximize, cautious
        self.state: dict[int, dict] = {}

    def step(self, key: int, theta: torch.Tensor, grad, *, lr, alpha, weight_decay, decay) -> torch.Tensor:
        """Return theta_t (a new float64 tensor, complex as real pairs) from theta_{t-1}."""
        if grad is None:
            return theta
        theta, grad = as_real(theta).double(), as_real(grad).double()
        g = -grad if self.maximize else grad
        if decay == "l2":
            g = g + weight_decay * theta
        state = self.state.setdefault(
            key, {"step": 0, "exp_avg": torch.zeros_like(theta), "exp_avg_sq": torch.zeros_like(theta),
                  "max_exp_avg_sq": torch.zeros_like(theta)}
        )  # fmt: skip
        state["step"] += 1
        t = state["step"]
        state["exp_avg"] = self.beta1 * state["exp_avg"] + (1 - self.beta1) * g
        state["exp_avg_sq"] = self.beta2 * state["exp_avg_sq"] + (1 - self.beta2) * g * g
        second = state["exp_avg_sq"]
        if self.amsgrad:
            state["max_exp_avg_sq"] = torch.maximum(state["max_exp_avg_sq"], state["exp_avg_sq"])
            second = state["max_exp_avg_sq"]
        m_hat = state["exp_avg"] / (1 - self.beta1**t)
        v_hat = second / (1 - self.beta2**t)
        adam_direction = m_hat / (torch.sqrt(v_hat) + self.eps)
        mask = cautious_mask(adam_direction, theta) if self.cautious else 1.0
        if decay == "decoupled":
            eta = schedule_multiplier(lr, alpha)
            return theta - eta * (alpha * adam_direction + weight_decay * mask * theta)
        return theta - lr * adam_direction - decay_of_step(decay, lr, alpha, weight_decay) * mask * theta

    def state_tensors(self, key: int) -> dict[str, torch.Tensor]:
        state = self.state.get(key)
        if state is None:
            return {}
        tensors = {"step": torch.tensor(float(state["step"])), "exp_avg": state["exp_avg"], "exp_avg_sq": state["exp_avg_sq"]}
        if self.amsgrad:
            tensors["max_exp_avg_sq"] = state["max_exp_avg_sq"]
        return tensors


class ReferenceSGD:
    """Algorithm 1 (SGD with L2 / SGDW, momentum), the scheduled step inside the buffer, in float64.

        g_t     = grad  (negated when maximizing)        [+ lambda * theta_{t-1}  with L2]
        m_t     = beta1 m_{t-1} + eta_t * alpha * g_t     (m_0 = 0)
        theta_t = theta_{t-1} - m_t - eta_t * lambda * theta_{t-1}          (decoupled)
    Nesterov: the step is beta1 m_t + eta_t alpha g_t instead of m_t. Without momentum there is no buffer.
    """

    def __init__(self, *, momentum=0.9, nesterov=False, maximize=False, cautious=False):
        self.momentum, self.nesterov, self.maximize, self.cautious = momentum, nesterov, maximize, cautious
        self.state: dict[int, dict] = {}

    def step(self, key: int, theta: torch.Tensor, grad, *, lr, alpha, weight_decay, decay) -> torch.Tensor:
        if grad is None:
            return theta
        theta, grad = as_real(theta).double(), as_real(grad).double()
        g = -grad if self.maximize else grad
        if decay == "l2":
            g = g + weight_decay * theta
        eta = schedule_multiplier(lr, alpha) if alpha else 0.0
        scheduled_step = lr  # = eta_t * alpha
        if self.momentum == 0:
            update = scheduled_step * g
        else:
            state = self.state.setdefault(key, {"momentum_buffer": torch.zeros_like(theta)})
            state["momentum_buffer"] = self.momentum * state["momentum_buffer"] + scheduled_step * g
            m = state["momentum_buffer"]
            update = self.momentum * m + scheduled_step * g if self.nesterov else m
        mask = cautious_mask(update, theta) if self.cautious else 1.0
        if decay == "decoupled":
            return theta - update - eta * weight_decay * mask * theta
        return theta - update - decay_of_step(decay, lr, alpha, weight_decay) * mask * theta

    def state_tensors(self, key: int) -> dict[str, torch.Tensor]:
        state = self.state.get(key)
        return dict(state) if state else {}


def cosine_warm_restarts(step: int, steps_per_epoch: int, first_period: float, period_mult: float) -> float:
    """eta_t of eq. 14-15 (eta_min = 0, eta_max = 1) after ``step`` batches, computed the slow, obvious way."""
    t_cur, t_i = 0.0, float(first_period)
    for _ in range(step):
        t_cur += 1.0 / steps_per_epoch
        if t_cur >= t_i - 1e-12:
            t_cur, t_i = 0.0, t_i * period_mult
    return 0.5 * (1 + math.cos(math.pi * t_cur / t_i))
