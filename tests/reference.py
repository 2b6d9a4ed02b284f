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

import numpy
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


# ------------------------------------------------------------------------------------------------------------
# Low-precision parameters with a float32 master (decoupled.precision): the float32 step emulated in float64.
#
# Every operation of the step is computed in float64 and rounded to float32 at once (``f32``): for +, -, *, /
# and sqrt of float32 operands that is the correctly rounded float32 result (float64 has more than 2 * 24 + 2
# bits, so rounding twice is innocuous), which is what IEEE float32 arithmetic without fused multiply-adds gives.
# The square root is numpy's (the hardware's, correctly rounded). The order of the operations is the paper's
# formulas read left to right, as decoupled/kernels/lowp.py states it:
#     Adam: m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) (g g);  s = max(vmax, v) (amsgrad)
#           theta = k theta - (step_size m) / (sqrt(s) inv_bc2 + eps),  step_size = lr / (1 - beta1^t),
#           inv_bc2 = 1 / sqrt(1 - beta2^t), both in double and then rounded; k = 1 - factor (1 where cautious
#           decay masks it); g = (maximize ? -grad : grad) (+ l2 theta)
#     SGD:  g = grad (+ l2' theta);  m = mu m + lr' g;  u = nesterov ? mu m + lr' g : m;  theta = k theta - u,
#           lr' = +-lr and l2' = +-l2 (negative to maximize)


def f32(x):
    """Round float64 values (tensor or number) to the nearest float32, kept as float64."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.float32).to(torch.float64)
    return float(numpy.float32(x))


def f32_sqrt(x: torch.Tensor) -> torch.Tensor:
    return f32(torch.from_numpy(numpy.sqrt(x.numpy())))


def opposite(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a > 0) & (b < 0)) | ((a < 0) & (b > 0))


class ReferenceMasterAdam:
    """AdamW on a float32 master (float64 tensors holding float32 values), per tensor."""

    def __init__(self, *, betas=(0.9, 0.999), eps=1e-8, amsgrad=False, maximize=False, cautious=False):
        self.beta1, self.beta2 = betas
        self.eps, self.amsgrad, self.maximize, self.cautious = eps, amsgrad, maximize, cautious
        self.state: dict[int, dict] = {}

    def step(self, key, theta, grad, *, lr, alpha, weight_decay, decay):
        """theta_t (float64 holding a float32 value) from theta_{t-1} and a gradient (any float dtype)."""
        if grad is None:
            return theta
        theta, g = theta.double().cpu(), grad.double().cpu()
        zeros = torch.zeros_like(theta)
        state = self.state.setdefault(key, {"step": 0, "exp_avg": zeros, "exp_avg_sq": zeros, "max_exp_avg_sq": zeros})
        state["step"] += 1
        t = state["step"]
        factor = decay_of_step(decay, lr, alpha, weight_decay)
        if self.maximize:
            g = -g
        if decay == "l2":
            g = f32(g + f32(f32(weight_decay) * theta))
        b1, b2 = f32(self.beta1), f32(self.beta2)
        m = f32(f32(b1 * state["exp_avg"]) + f32(f32(1 - self.beta1) * g))
        v = f32(f32(b2 * state["exp_avg_sq"]) + f32(f32(1 - self.beta2) * f32(g * g)))
        state["exp_avg"], state["exp_avg_sq"] = m, v
        second = v
        if self.amsgrad:
            second = state["max_exp_avg_sq"] = torch.maximum(state["max_exp_avg_sq"], v)
        step_size, inv_bc2 = f32(lr / (1 - self.beta1**t)), f32(1 / math.sqrt(1 - self.beta2**t))
        denom = f32(f32(f32_sqrt(second) * inv_bc2) + f32(self.eps))
        update = f32(f32(step_size * m) / denom)
        keep = torch.full_like(theta, f32(1 - factor))
        if self.cautious:
            keep = torch.where(opposite(m, theta), torch.ones_like(theta), keep)
        return f32(f32(keep * theta) - update)

    def state_tensors(self, key):
        state = self.state.get(key)
        if state is None:
            return {}
        tensors = {"step": torch.tensor(float(state["step"])), "exp_avg": state["exp_avg"], "exp_avg_sq": state["exp_avg_sq"]}
        if self.amsgrad:
            tensors["max_exp_avg_sq"] = state["max_exp_avg_sq"]
        return tensors


class ReferenceMasterSGD:
    """SGDW on a float32 master, the scheduled step inside the buffer, per tensor."""

    def __init__(self, *, momentum=0.9, nesterov=False, maximize=False, cautious=False):
        self.momentum, self.nesterov, self.maximize, self.cautious = momentum, nesterov, maximize, cautious
        self.state: dict[int, dict] = {}

    def step(self, key, theta, grad, *, lr, alpha, weight_decay, decay):
        if grad is None:
            return theta
        theta, g = theta.double().cpu(), grad.double().cpu()
        sign = -1.0 if self.maximize else 1.0
        factor = decay_of_step(decay, lr, alpha, weight_decay)
        if decay == "l2":
            g = f32(g + f32(f32(sign * weight_decay) * theta))
        step = f32(f32(sign * lr) * g)
        if self.momentum == 0:
            update = step
        else:
            mu = f32(self.momentum)
            state = self.state.setdefault(key, {"momentum_buffer": torch.zeros_like(theta)})
            state["momentum_buffer"] = m = f32(f32(mu * state["momentum_buffer"]) + step)
            update = f32(f32(mu * m) + step) if self.nesterov else m
        keep = torch.full_like(theta, f32(1 - factor))
        if self.cautious:
            keep = torch.where(opposite(update, theta), torch.ones_like(theta), keep)
        return f32(f32(keep * theta) - update)

    def state_tensors(self, key):
        state = self.state.get(key)
        return dict(state) if state else {}


def round_like_parameter(master: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The parameter an "exact" master is written back as, from the definition: the nearest value of ``dtype``;
    for bfloat16 ties go away from zero (the split that keeps every float32 master recoverable from 16 more
    bits), for float16 to even (torch's cast). bfloat16 is computed from the two neighbours of the master in
    float64, not from bit patterns."""
    master = master.to(torch.float32)
    if dtype == torch.float16:
        return master.to(torch.float16)
    m = master.double()
    down = master.view(torch.int32).bitwise_and(-65536).view(torch.float32).double()  # toward zero
    exponent = torch.frexp(down)[1].double() - 1  # floor(log2 |down|) for down != 0
    exponent = torch.where(down == 0, torch.full_like(exponent, -126.0), exponent.clamp(min=-126.0))
    ulp = torch.pow(2.0, exponent - 7)  # bfloat16 keeps 7 bits after the leading one (subnormals: 2^-133)
    up = down + torch.sign(m) * ulp
    nearest = torch.where((m - down).abs() < (up - m).abs(), down, up)  # a tie goes up: away from zero
    nearest = torch.where(torch.isfinite(m) & (m != 0), nearest, m)  # inf, NaN and signed zeros as they are
    return nearest.to(torch.bfloat16)
