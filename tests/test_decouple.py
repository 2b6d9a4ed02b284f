"""decouple(): exactness of every route it takes, failure paths, hooks, pickling, Muon, and its refusals."""

from __future__ import annotations

import copy
import io
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.optim.optimizer as torch_optimizer

import decoupled
from device import TEST_DEVICE
from reference import decay_of_step

STEPS = 40
SRC = str(Path(__file__).resolve().parents[1] / "src")


def make_params(seed: int = 0, shapes=((6, 4), (4, 3), (3, 2, 2), (5,))) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(*s, generator=generator, dtype=torch.float64).to(TEST_DEVICE)) for s in shapes
    ]


def set_grads(params, step: int, *, skip_every: int = 0) -> None:
    generator = torch.Generator().manual_seed(step)
    for index, p in enumerate(params):
        noise = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        if skip_every and index == 1 and step % skip_every == 2:
            p.grad = None  # a parameter without a gradient this step: no decay, no state change
            continue
        scale = 10.0 ** (index - 1)
        p.grad = scale * (p.detach() - 0.5) + scale * noise


def warmup_cosine(step: int) -> float:
    """0 at the first step (lr_t = 0), then a cosine: every step has a new lr."""
    return 0.0 if step == 0 else 0.5 * (1 + math.cos(math.pi * step / STEPS))


class DecayThenStep:
    """The rule from the formulas: theta_t = theta_{t-1} - u_t - factor * theta_{t-1}, with u_t the inner
    optimizer's update (its own decay off) computed at theta_{t-1}; for "l2" the inner step sees
    g + weight_decay * theta_{t-1} (negated with the gradient under maximize). For inner updates that do not read
    theta this is decay-then-step; Adafactor's does (its relative step size is ||theta_{t-1}||)."""

    def __init__(self, params, inner_cls, kwargs, weight_decay, decay):
        self.inner = inner_cls(params, **kwargs, **({"weight_decay": 0.0} if weight_decay is not None else {}))
        self.weight_decay, self.decay, self.base_lr = weight_decay, decay, kwargs["lr"]

    @torch.no_grad()
    def step(self):
        group = self.inner.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        saved = [p.grad for p in params]
        previous = [p.detach().clone() for p in params]
        if self.decay == "l2":
            sign = -1.0 if group.get("maximize") else 1.0
            for p in params:
                p.grad = p.grad + sign * self.weight_decay * p
        factor = decay_of_step(self.decay, group["lr"], self.base_lr, self.weight_decay)
        self.inner.step()
        for p, g, theta in zip(params, saved, previous):
            p.sub_(factor * theta)
            p.grad = g


def run_pair(inner_cls, kwargs, decay, *, weight_decay=0.05, shapes=None, steps=STEPS, skip_every=3):
    """(decouple(inner_cls)'s params and optimizer, the reference's params and optimizer) after ``steps`` steps."""
    shape_args = {} if shapes is None else {"shapes": shapes}
    ours_params, ref_params = make_params(**shape_args), make_params(**shape_args)
    ours = decoupled.decouple(inner_cls)(ours_params, **kwargs, weight_decay=weight_decay, decay=decay)
    reference = DecayThenStep(ref_params, inner_cls, kwargs, weight_decay, decay)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, warmup_cosine) for o in (ours, reference.inner)]
    for step in range(steps):
        set_grads(ours_params, step, skip_every=skip_every)
        set_grads(ref_params, step, skip_every=skip_every)
        ours.step()
        reference.step()
        for scheduler in schedulers:
            scheduler.step()
    return ours_params, ours, ref_params, reference.inner


def assert_same_run(ours_params, ours, ref_params, ref, rtol=1e-12, atol=1e-14):
    for index, (p, q) in enumerate(zip(ours_params, ref_params)):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=rtol, atol=atol, msg=lambda m: f"param {index}: {m}")
        ours_state, ref_state = ours.state.get(p, {}), ref.state.get(q, {})
        assert set(ours_state) == set(ref_state)
        for key, value in ref_state.items():
            if torch.is_tensor(value):
                torch.testing.assert_close(ours_state[key].double(), value.double(), rtol=rtol, atol=atol)


INNER = [
    (torch.optim.Adam, dict(lr=0.01)),
    (torch.optim.Adam, dict(lr=0.01, foreach=True)),
    (torch.optim.Adam, dict(lr=0.01, foreach=False)),
    (torch.optim.Adam, dict(lr=0.01, fused=True, amsgrad=True)),
    (torch.optim.Adam, dict(lr=0.01, maximize=True)),
    (torch.optim.AdamW, dict(lr=0.01)),
    (torch.optim.NAdam, dict(lr=0.01)),
    (torch.optim.NAdam, dict(lr=0.01, foreach=True)),
    (torch.optim.RAdam, dict(lr=0.01)),
    (torch.optim.RAdam, dict(lr=0.01, foreach=True)),
    (torch.optim.Adafactor, dict(lr=0.01)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    (torch.optim.RMSprop, dict(lr=0.01, momentum=0.5, maximize=True)),
    (torch.optim.Adagrad, dict(lr=0.05)),
]


def _id(value):
    if isinstance(value, type):
        return value.__name__
    return "-".join(f"{k}={v}" for k, v in value.items() if k != "lr") or "default"


@pytest.mark.parametrize("decay", ["decoupled", "lr", "constant", "l2"])
@pytest.mark.parametrize("inner_cls, kwargs", INNER, ids=_id)
def test_decouple_is_decay_then_inner_step_on_every_route(inner_cls, kwargs, decay):
    """float64, a schedule that starts at lr_t = 0, a parameter whose gradient is sometimes None: parameters and
    every state tensor equal the plain composition, whichever route (the inner optimizer's own decay, or a
    decay pass first) decouple() takes."""
    shapes = ((6, 4), (4, 3), (3, 5)) if inner_cls is torch.optim.Adafactor else None
    assert_same_run(*run_pair(inner_cls, kwargs, decay, shapes=shapes))


@pytest.mark.parametrize("decay", ["decoupled", "lr", "constant"])
def test_decouple_muon_is_decay_then_muon_without_its_decay(decay):
    """Muon's own decay is lr-coupled (theta *= 1 - lr_t wd); decouple(Muon) gives the independent decay."""
    shapes = ((6, 4), (4, 3), (3, 5))
    kwargs = dict(lr=0.02, momentum=0.9)
    ours_params, ours, ref_params, ref = run_pair(torch.optim.Muon, kwargs, decay, shapes=shapes, steps=25)
    assert_same_run(ours_params, ours, ref_params, ref, rtol=1e-11, atol=1e-13)


def test_decouple_muon_decay_does_not_follow_its_learning_rate():
    """The decay of decouple(Muon) at decay='decoupled' is eta_t * weight_decay, whatever Muon's lr."""
    MuonW = decoupled.decouple(torch.optim.Muon)
    results = []
    for lr in (0.02, 0.002):
        param = torch.nn.Parameter(torch.full((3, 3), 2.0, dtype=torch.float64))
        optimizer = MuonW([param], lr=lr, weight_decay=0.1)
        param.grad = torch.zeros_like(param)  # no update: only the decay moves theta
        optimizer.step()
        results.append(param.detach().clone())
        assert decoupled.effective_decay(optimizer) == [pytest.approx(0.1)]
    for result in results:
        torch.testing.assert_close(result, torch.full((3, 3), 2.0 * 0.9, dtype=torch.float64))


def test_decouple_adam_built_plainly_takes_torchs_fused_kernel_on_the_cpu():
    AdamD = decoupled.decouple(torch.optim.Adam)
    assert AdamD(make_params(), lr=0.01).param_groups[0]["fused"] is True
    assert AdamD(make_params(), lr=0.01, foreach=False).param_groups[0]["fused"] is None
    assert AdamD(make_params(), lr=0.01, fused=False).param_groups[0]["fused"] is False
    generator_params = (p for p in make_params())
    assert AdamD(generator_params, lr=0.01).param_groups[0]["fused"] is True
    complex_param = torch.nn.Parameter(torch.randn(3, dtype=torch.complex128))
    assert AdamD([complex_param], lr=0.01).param_groups[0]["fused"] is None  # torch's fused Adam refuses complex
    named = decoupled.decouple(torch.optim.Adam)(torch.nn.Linear(3, 2).named_parameters(), lr=0.01)
    assert named.param_groups[0]["fused"] is True and named.param_groups[0]["param_names"] == ["weight", "bias"]


@pytest.mark.parametrize("layout", ["channels_last-grad", "column-slice", "channels_last-everything"])
def test_decouple_adam_fused_default_handles_any_memory_layout(layout):
    """torch's fused kernel walks raw memory; a group whose tensors do not share one dense layout takes torch's
    default path for that step, so every layout gives the for-loop path's answer."""

    def build(fused_default: bool):
        torch.manual_seed(0)
        base = torch.randn(4, 6, 3, 3, dtype=torch.float64)
        if layout == "column-slice":
            holder = torch.randn(8, 10, dtype=torch.float64)
            param = torch.nn.Parameter(holder[:, 2:7])  # a non-contiguous view
        elif layout == "channels_last-everything":
            param = torch.nn.Parameter(base.to(memory_format=torch.channels_last))
        else:
            param = torch.nn.Parameter(base.clone())
        options = {} if fused_default else {"foreach": False}
        return param, decoupled.decouple(torch.optim.Adam)([param], lr=0.01, weight_decay=0.1, **options)

    results = []
    for fused_default in (True, False):
        param, optimizer = build(fused_default)
        before_base = param._base.clone() if param._base is not None else None
        for step in range(6):
            grad = torch.randn(param.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
            if layout.startswith("channels_last"):
                grad = grad.contiguous(memory_format=torch.channels_last)
            param.grad = grad
            optimizer.step()
        if before_base is not None:  # the other columns of the base tensor are untouched
            torch.testing.assert_close(param._base[:, :2], before_base[:, :2], rtol=0, atol=0)
            torch.testing.assert_close(param._base[:, 7:], before_base[:, 7:], rtol=0, atol=0)
        results.append(param.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "inner_cls, kwargs",
    [(torch.optim.Adam, dict(lr=0.1)), (torch.optim.RMSprop, dict(lr=0.1)), (torch.optim.NAdam, dict(lr=0.1))],
    ids=_id,
)
def test_a_step_refused_for_a_sparse_gradient_leaves_the_parameters_untouched(inner_cls, kwargs):
    dense = torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    embedding = torch.nn.Embedding(5, 2, sparse=True).double()
    optimizer = decoupled.decouple(inner_cls)(
        [{"params": [dense]}, {"params": embedding.parameters()}], **kwargs, weight_decay=0.5, decay="constant"
    )
    dense.grad = torch.ones_like(dense)
    embedding(torch.tensor([1, 3])).sum().backward()
    before = [dense.detach().clone(), embedding.weight.detach().clone()]
    with pytest.raises(RuntimeError, match=r"does not support sparse gradients \(param group 1, parameter 0"):
        optimizer.step()
    torch.testing.assert_close(dense.detach(), before[0], rtol=0, atol=0)
    torch.testing.assert_close(embedding.weight.detach(), before[1], rtol=0, atol=0)
    assert optimizer.param_groups[0]["weight_decay"] == 0.5  # the groups' settings are restored too
    assert optimizer.state.get(dense, {}) == {}


class FailingSGD(torch.optim.Optimizer):
    """A third-party optimizer whose step raises after checking its inputs (decouple() decays first for it)."""

    def __init__(self, params, lr=0.1, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and torch.isnan(p.grad).any():
                    raise RuntimeError("NaN gradient")
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])


def test_a_step_that_raises_in_the_inner_optimizer_undoes_its_decay():
    param = torch.nn.Parameter(torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    optimizer = decoupled.decouple(FailingSGD)([param], lr=0.1, weight_decay=0.01)
    before = param.detach().clone()
    param.grad = torch.full_like(param, float("nan"))
    with pytest.raises(RuntimeError, match="NaN gradient"):
        optimizer.step()
    torch.testing.assert_close(param.detach(), before, rtol=2**-52, atol=0)  # within one rounding
    param.grad = torch.ones_like(param)
    optimizer.step()  # and the next step is an ordinary one
    torch.testing.assert_close(param.detach(), before * (1 - 0.01) - 0.1, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("inner_cls", [torch.optim.Adam, torch.optim.RMSprop, torch.optim.SGD, torch.optim.Muon])
def test_step_hooks_run_once_per_step_after_a_plain_optimizer_was_built(inner_cls):
    params = [torch.nn.Parameter(torch.randn(3, 3))]
    inner_cls(params, lr=0.01)  # a plain X built anywhere patches X.step with torch's hook-running wrapper
    optimizer = decoupled.decouple(inner_cls)(params, lr=0.01, weight_decay=0.01)
    calls = []
    optimizer.register_step_pre_hook(lambda *args: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *args: calls.append("post"))
    global_pre = torch_optimizer.register_optimizer_step_pre_hook(lambda *args: calls.append("global-pre"))
    global_post = torch_optimizer.register_optimizer_step_post_hook(lambda *args: calls.append("global-post"))
    try:
        params[0].grad = torch.ones(3, 3)
        optimizer.step()
        optimizer.step()
    finally:
        global_pre.remove()
        global_post.remove()
    assert calls == ["global-pre", "pre", "post", "global-post"] * 2


def test_decouple_returns_one_class_per_optimizer_class():
    assert decoupled.decouple(torch.optim.Adam) is decoupled.decouple(torch.optim.Adam)
    AdamD = decoupled.decouple(torch.optim.Adam)
    assert decoupled.decouple(AdamD) is AdamD
    assert isinstance(AdamD(make_params(), lr=0.01), torch.optim.Adam)
    assert pickle.loads(pickle.dumps(AdamD)) is AdamD


def _train(model, optimizer, steps, start=0):
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(8, 4, generator=generator, dtype=torch.float64)
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()


@pytest.mark.parametrize("inner_cls", [torch.optim.Adam, torch.optim.RMSprop])
def test_a_decouple_optimizer_torch_saves_and_loads_whole(inner_cls):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    optimizer = decoupled.decouple(inner_cls)(model.parameters(), lr=0.01, weight_decay=0.01)
    _train(model, optimizer, 3)
    buffer = io.BytesIO()
    torch.save({"model": model, "optimizer": optimizer}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    restored_model, restored = loaded["model"], loaded["optimizer"]
    assert type(restored) is type(optimizer)
    assert restored.param_groups[0]["params"][0] is restored_model.weight  # the same tensors, as torch.save keeps
    assert restored.param_groups[0]["weight_decay"] == 0.01 and restored.param_groups[0]["decay"] == "decoupled"
    _train(model, optimizer, 4, start=3)
    _train(restored_model, restored, 4, start=3)
    for p, q in zip(model.parameters(), restored_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    clone = pickle.loads(pickle.dumps(optimizer))
    assert type(clone) is type(optimizer) and len(clone.state) == len(optimizer.state)


def test_a_pickled_decouple_optimizer_loads_in_a_fresh_process(tmp_path):
    """The class is found by name in a process that never called decouple(): it pickles as decouple(inner)."""
    model = torch.nn.Linear(3, 2)
    optimizer = decoupled.decouple(torch.optim.NAdam)(model.parameters(), lr=0.01, weight_decay=0.02, decay="lr")
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / "opt.pt"
    torch.save(optimizer, path)
    script = (
        "import sys, torch; sys.path.insert(0, sys.argv[2]); "
        "o = torch.load(sys.argv[1], weights_only=False); g = o.param_groups[0]; "
        "print(type(o).__name__, type(o).__mro__[2].__name__, g['decay'], g['weight_decay'], len(o.state))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path), SRC], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["DecoupledNAdam", "NAdam", "lr", "0.02", "2"]


def test_decouple_refuses_cautious_decay():
    with pytest.raises(ValueError, match=r"does not support cautious=True: cautious weight decay decays only"):
        decoupled.decouple(torch.optim.Adam)(make_params(), lr=0.01, cautious=True)
    with pytest.raises(ValueError, match=r"param group 0: decouple\(\) does not support cautious=True"):
        decoupled.decouple(torch.optim.Adam)([{"params": make_params(), "cautious": True}], lr=0.01)
    decoupled.decouple(torch.optim.Adam)(make_params(), lr=0.01, cautious=False)  # the default, accepted


def test_decouple_l2_under_maximize_matches_adamw_l2():
    """decay='l2' with maximize=True: the penalty pulls towards 0 (torch's g -> -g + wd theta), on every route."""
    ours = make_params()
    theirs = make_params()
    a = decoupled.decouple(torch.optim.Adam)(ours, lr=0.01, weight_decay=0.1, decay="l2", maximize=True)
    b = decoupled.AdamW(theirs, lr=0.01, weight_decay=0.1, decay="l2", maximize=True)
    for step in range(10):
        set_grads(ours, step)
        set_grads(theirs, step)
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_decouple_adam_resumed_into_another_memory_layout_matches_the_uninterrupted_run():
    """A checkpoint saved in the default layout, loaded into a channels_last model (its state stays contiguous):
    torch's fused kernel would mix the layouts; decouple(Adam) takes torch's default path for such a group."""

    def conv(memory_format):
        torch.manual_seed(0)
        return torch.nn.Conv2d(3, 4, 3).double().to(memory_format=memory_format)

    def steps(model, optimizer, start, stop):
        for step in range(start, stop):
            x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
            optimizer.zero_grad()
            model(x.to(memory_format=torch.channels_last)).square().mean().backward()
            optimizer.step()

    AdamD = decoupled.decouple(torch.optim.Adam)
    model = conv(torch.contiguous_format)
    optimizer = AdamD(model.parameters(), lr=0.01, weight_decay=0.01)
    steps(model, optimizer, 0, 3)
    checkpoint = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    steps(model, optimizer, 3, 8)

    resumed = conv(torch.channels_last)
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = AdamD(resumed.parameters(), lr=0.01, weight_decay=0.01)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    assert resumed.weight.is_contiguous(memory_format=torch.channels_last)
    assert resumed_optimizer.state[resumed.weight]["exp_avg"].is_contiguous()  # the layouts differ
    steps(resumed, resumed_optimizer, 3, 8)
    for p, q in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)
