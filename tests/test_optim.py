"""Optimizers and schedules against straightforward NumPy reference computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpunn
from gpunn.errors import InputError
from gpunn.optim import (
    SGD,
    Adam,
    ConstantSchedule,
    CosineSchedule,
    Momentum,
    Nesterov,
    StepSchedule,
    make_optimizer,
    make_schedule,
    optimizer_from_config,
    schedule_from_config,
)

N_PARAMS = 37
STEPS = 6
BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)]


# ---------------------------------------------------------------------- reference updates
def reference_sgd(theta, grads, lrs, weight_decay=0.0):
    theta = theta.copy()
    for g, lr in zip(grads, lrs, strict=True):
        theta = theta - lr * (g + weight_decay * theta)
    return theta, {}


def reference_momentum(theta, grads, lrs, mu, nesterov=False, weight_decay=0.0):
    theta, v = theta.copy(), np.zeros_like(theta)
    for g, lr in zip(grads, lrs, strict=True):
        g = g + weight_decay * theta
        v = mu * v + g
        theta = theta - lr * (g + mu * v) if nesterov else theta - lr * v
    return theta, {"velocity": v}


def reference_adam(theta, grads, lrs, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    theta, m, v = theta.copy(), np.zeros_like(theta), np.zeros_like(theta)
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        theta = theta * (1 - lr * weight_decay)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta, {"m": m, "v": v}


CASES = {
    "sgd": (lambda: SGD(0.3), lambda th, gs, lrs: reference_sgd(th, gs, lrs)),
    "sgd+wd": (lambda: SGD(0.3, weight_decay=0.05),
               lambda th, gs, lrs: reference_sgd(th, gs, lrs, 0.05)),
    "momentum": (lambda: Momentum(0.1, momentum=0.8),
                 lambda th, gs, lrs: reference_momentum(th, gs, lrs, 0.8)),
    "momentum+wd": (lambda: Momentum(0.1, momentum=0.9, weight_decay=0.01),
                    lambda th, gs, lrs: reference_momentum(th, gs, lrs, 0.9, False, 0.01)),
    "nesterov": (lambda: Nesterov(0.1, momentum=0.7),
                 lambda th, gs, lrs: reference_momentum(th, gs, lrs, 0.7, True)),
    "nesterov+wd": (lambda: make_optimizer("nesterov", 0.05, momentum=0.9, weight_decay=0.02),
                    lambda th, gs, lrs: reference_momentum(th, gs, lrs, 0.9, True, 0.02)),
    "adam": (lambda: Adam(0.01), lambda th, gs, lrs: reference_adam(th, gs, lrs)),
    "adamw": (lambda: Adam(0.02, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1),
              lambda th, gs, lrs: reference_adam(th, gs, lrs, 0.8, 0.99, 1e-6, 0.1)),
}


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=N_PARAMS)
    grads = [rng.normal(size=N_PARAMS) for _ in range(STEPS)]
    lrs = [1.0, 1.0, 0.5, 0.5, 0.25, 0.1]  # per-step factors of the base rate, as a schedule
    return theta, grads, lrs


def _run(opt, ops, theta, grads, factors, dtype):
    params = ops.asarray(np.array(theta, dtype=dtype))  # copies: the kernels work in place
    for g, factor in zip(grads, factors, strict=True):
        opt.lr = opt.base_lr * factor
        opt.step(ops, params, ops.asarray(np.array(g, dtype=dtype)))
    return ops.to_host(params)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_update_matches_the_reference_over_several_steps(case, dtype, backend):
    make, reference = CASES[case]
    ops = gpunn.get_backend(backend)
    theta, grads, factors = _problem()
    opt = make()
    got = _run(opt, ops, theta, grads, factors, dtype)
    expected, state = reference(theta, grads, [opt.base_lr * f for f in factors])
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == "float64" else {"rtol": 2e-5, "atol": 2e-6}
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, expected, **tol)
    assert not np.allclose(got, theta)  # it did move
    assert opt.steps == STEPS
    host_state = opt.state_arrays(ops)
    for key, value in state.items():
        np.testing.assert_allclose(host_state[key], value, **tol)
    assert int(host_state["steps"]) == STEPS


def test_sgd_is_the_articles_rule():
    ops = gpunn.get_backend("numpy")
    params = np.array([1.0, -2.0, 0.5])
    SGD(3.0).step(ops, params, np.array([0.1, 0.2, -0.3]))
    np.testing.assert_allclose(params, [1.0 - 0.3, -2.0 - 0.6, 0.5 + 0.9])


def test_adam_first_step_moves_each_parameter_by_about_lr():
    """With bias correction, the first Adam step is η·g/(|g| + ε): about η per parameter."""
    ops = gpunn.get_backend("numpy")
    params = np.zeros(4)
    Adam(0.01).step(ops, params, np.array([3.0, -0.5, 1e-3, -200.0]))
    np.testing.assert_allclose(params, [-0.01, 0.01, -0.01, 0.01], rtol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_round_trip_continues_exactly(case):
    """3 steps, state saved to host arrays and loaded into a rebuilt optimizer, 3 more steps:
    the same parameters as 6 straight steps (what --resume relies on)."""
    make, _ = CASES[case]
    ops = gpunn.get_backend("numpy")
    theta, grads, factors = _problem(1)
    straight = _run(make(), ops, theta, grads, factors, "float32")

    first = make()
    half = _run(first, ops, theta, grads[:3], factors[:3], "float32")
    saved = {k: np.array(v) for k, v in first.state_arrays(ops).items()}
    second = optimizer_from_config(first.config())
    assert second.config() == first.config()
    second.load_state_arrays(ops, saved, np.float32)
    assert second.steps == 3
    resumed = _run(second, ops, half, grads[3:], factors[3:], "float32")
    np.testing.assert_array_equal(resumed, straight)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
def test_config_round_trip_through_a_model_file(tmp_path, name):
    ops = gpunn.get_backend("numpy")
    net = gpunn.Network([3, 4, 2], backend="numpy", seed=1)
    options = {"weight_decay": 0.01}
    if name in ("momentum", "nesterov"):
        options["momentum"] = 0.5
    if name == "adam":
        options.update(beta1=0.8, beta2=0.95, eps=1e-7)
    X = np.random.default_rng(0).normal(size=(20, 3))
    net.fit(X, (X[:, 0] > 0).astype(int), epochs=1, batch_size=4,
            optimizer=make_optimizer(name, 0.05, **options), progress=False)
    net.save(tmp_path / "m.npz")
    restored = gpunn.load(tmp_path / "m.npz", backend="numpy").checkpoint
    opt = restored.optimizer()
    assert opt.name == name
    assert opt.config() == net.optimizer.config()
    opt.load_state_arrays(ops, restored.optimizer_state, np.float32)
    assert opt.steps == net.optimizer.steps == 5
    for key, value in net.optimizer.state_arrays(ops).items():
        np.testing.assert_array_equal(opt.state_arrays(ops)[key], value)


def test_default_learning_rates():
    assert SGD().lr == 0.1
    assert Momentum().lr == 0.1 and Momentum().momentum == 0.9
    assert Adam().lr == 0.001
    assert make_optimizer(None).name == "sgd"


def test_nesterov_is_its_own_class():
    opt = make_optimizer("NESTEROV", 0.1, momentum=0.5)
    assert type(opt) is Nesterov and opt.name == Nesterov.name == "nesterov"
    assert isinstance(opt, Momentum) and opt.nesterov and not Momentum().nesterov
    assert repr(opt).startswith("Nesterov(")
    assert type(optimizer_from_config(opt.config())) is Nesterov
    with pytest.raises(TypeError):
        Momentum(0.1, nesterov=True)  # the class says which update it is


def test_an_optimizer_instance_keeps_its_own_settings():
    """A learning rate given beside an optimizer instance is refused, not silently preferred
    to the instance's (fit(lr=0.05, optimizer=Adam(lr=0.2)) trained at 0.05)."""
    opt = Adam(0.2)
    assert make_optimizer(opt) is opt
    with pytest.raises(InputError, match="lr cannot be given together with an optimizer"):
        make_optimizer(opt, 0.05)
    with pytest.raises(InputError, match="instance"):
        make_optimizer(opt, momentum=0.5)
    assert opt.lr == opt.base_lr == 0.2
    X = np.random.default_rng(0).normal(size=(20, 3))
    net = gpunn.Network([3, 2], backend="numpy")
    before = net.get_params()
    with pytest.raises(InputError, match="Adam"):
        net.fit(X, (X[:, 0] > 0).astype(int), lr=0.05, optimizer=opt, progress=False)
    assert opt.steps == 0
    for (W, b), (W0, b0) in zip(net.get_params(), before, strict=True):
        np.testing.assert_array_equal(W, W0)
        np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_optimizer("rmsprop"), "optimizer is 'rmsprop'"),
        (lambda: make_optimizer("sgd", 0.1, momentum=0.9), "no setting 'momentum'"),
        (lambda: make_optimizer("adam", 0.1, nesterov=True), "no setting 'nesterov'"),
        (lambda: Momentum(0.1, momentum=1.0), r"momentum must lie in \[0, 1\)"),
        (lambda: Momentum(0.1, momentum=float("nan")), "momentum"),
        (lambda: Momentum(0.1, momentum="high"), "momentum must be a number"),
        (lambda: Adam(beta2=1.5), "beta2"),
        (lambda: Adam(eps=0), "eps"),
        (lambda: SGD(-1.0), "lr"),
        (lambda: SGD(float("inf")), "lr"),
        (lambda: SGD(0.1, weight_decay=-0.1), "weight_decay"),
        (lambda: optimizer_from_config({"lr": 0.1}), "name"),
    ],
)
def test_bad_settings_are_refused(call, match):
    with pytest.raises((InputError, gpunn.InputTypeError), match=match):
        call()


def test_state_of_another_network_is_refused():
    ops = gpunn.get_backend("numpy")
    opt = Momentum(0.1)
    opt.load_state_arrays(ops, {"velocity": np.zeros(5), "steps": np.int64(2)}, np.float64)
    with pytest.raises(InputError, match="another network"):
        opt.step(ops, np.zeros(7), np.ones(7))
    with pytest.raises(InputError, match="lacks"):
        Adam().load_state_arrays(ops, {"m": np.zeros(3)}, np.float64)
    with pytest.raises(InputError, match="finite"):
        Adam().load_state_arrays(ops, {"m": np.zeros(3), "v": np.full(3, np.nan)}, np.float64)


def test_state_saved_before_the_first_step_is_empty():
    ops = gpunn.get_backend("numpy")
    for opt in (SGD(), Momentum(), Adam()):
        assert opt.state_arrays(ops) == {}
        opt.load_state_arrays(ops, {}, np.float32)
        assert opt.steps == 0


# ---------------------------------------------------------------------- schedules
def test_constant_schedule():
    schedule = make_schedule(None, 10)
    assert isinstance(schedule, ConstantSchedule)
    assert [schedule(e) for e in range(5)] == [1.0] * 5


def test_step_schedule():
    schedule = make_schedule("step", 10, step_size=3, gamma=0.5)
    assert isinstance(schedule, StepSchedule)
    assert [schedule(e) for e in range(8)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_cosine_schedule():
    schedule = make_schedule("cosine", 4)
    assert isinstance(schedule, CosineSchedule)
    expected = [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    np.testing.assert_allclose([schedule(e) for e in range(4)], expected)
    assert schedule(0) == 1.0 and schedule(2) == pytest.approx(0.5)
    # past the plan the last planned factor is kept: the rate does not climb again
    assert schedule(4) == schedule(10) == schedule(3) > 0


def test_schedule_config_round_trip_and_callables():
    for schedule in (ConstantSchedule(), StepSchedule(4, 0.3), CosineSchedule(12)):
        rebuilt = schedule_from_config(schedule.config())
        assert type(rebuilt) is type(schedule)
        assert [rebuilt(e) for e in range(15)] == [schedule(e) for e in range(15)]
    custom = lambda epoch: 0.9**epoch  # noqa: E731
    assert make_schedule(custom, 5) is custom


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_schedule("linear", 5), "schedule is 'linear'"),
        (lambda: make_schedule("step", 5, step_size=0), "step_size"),
        (lambda: make_schedule("step", 5, gamma=-0.5), "gamma"),
        (lambda: CosineSchedule(0), "epochs"),
        (lambda: schedule_from_config({"name": "step", "period": 3}), "unexpected"),
    ],
)
def test_bad_schedules_are_refused(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_fit_applies_the_schedule_to_the_learning_rate():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(30, 3))
    net = gpunn.Network([3, 2], output="softmax", loss="cross_entropy", backend="numpy")
    history = net.fit(X, (X[:, 0] > 0).astype(int), epochs=5, batch_size=10, lr=0.4,
                      schedule="step", progress=False)
    # step schedule defaults: step_size 10, so the rate stays; cosine falls
    assert history["lr"] == [0.4] * 5
    history = net.fit(X, (X[:, 0] > 0).astype(int), epochs=4, batch_size=10, lr=0.4,
                      schedule=StepSchedule(2, 0.5), progress=False)
    assert history["lr"] == [0.4, 0.4, 0.2, 0.2]
