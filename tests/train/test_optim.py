"""Tests for train.optim: each optimizer against a numpy version of its reference, plus the registry.

The float64 tests run 25 steps of each optimizer on a noisy quadratic whose gradient scales span
four orders of magnitude (so AdaBound's bounds, Adai's β₁ clipping, Yogi's sign and RAdam's two
regimes are all exercised, which the tests check on the references) and compare every iterate with
`optim_reference.py` to 1e-12.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import optim
from tests.train import optim_reference as ref

N_STEPS = 25
WD = 0.05  # Large enough that the decay changes the iterates far beyond the tolerance.
TOL = 1e-12


@pytest.fixture
def x64():
    """Run the test with jax_enable_x64 on, restoring the previous setting afterwards."""
    with jax.enable_x64(True):
        yield


# ------------------------------------------------------------------------------------------------
# The test problem: g_t(θ) = s ⊙ (0.5 θ + n_t), s spanning 1e-3 … 1e1, fixed noise n_t.

def _problem(seed: int = 0):
    """Initial parameters, gradient scales and per-step noise (numpy float64)."""
    rng = np.random.default_rng(seed)
    shapes = {"b": (5,), "w": (3, 4)}
    theta0 = {k: rng.normal(size=s) for k, s in shapes.items()}
    scale = {k: 10.0 ** rng.uniform(-3, 1, size=s) for k, s in shapes.items()}
    noise = {k: rng.normal(size=(N_STEPS,) + s) for k, s in shapes.items()}
    return theta0, scale, noise


def _grad_np(theta, t, scale, noise):
    return {k: scale[k] * (0.5 * theta[k] + noise[k][t]) for k in theta}


def _grad_jnp(theta, t, scale, noise):
    return {k: jnp.asarray(scale[k]) * (0.5 * theta[k] + jnp.asarray(noise[k][t])) for k in theta}


def _schedule(lr0):
    """A step schedule (÷10 at update 8 and 16) as an optax schedule and as a numpy list."""
    def fn(count):
        return lr0 * jnp.where(count >= 8, 0.1, 1.0) * jnp.where(count >= 16, 0.1, 1.0)
    lrs = [lr0 * (0.1 if t >= 8 else 1.0) * (0.1 if t >= 16 else 1.0) for t in range(N_STEPS)]
    return fn, lrs


def _run_optax(tx, theta0, scale, noise):
    params = {k: jnp.asarray(v) for k, v in theta0.items()}
    state = tx.init(params)
    path = []
    for t in range(N_STEPS):
        grads = _grad_jnp(params, t, scale, noise)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        path.append({k: np.asarray(v) for k, v in params.items()})
    return path


def _run_reference(opt, lrs, scale, noise):
    path = []
    for t in range(N_STEPS):
        opt.step(_grad_np(opt.p, t, scale, noise), lrs[t])
        path.append({k: v.copy() for k, v in opt.p.items()})
    return path


# ------------------------------------------------------------------------------------------------
# name, keyword arguments, reference constructor (params, initial lr) -> object, initial lr,
# and a check that the reference run exercised the interesting branches.

def _adam_kw():
    return dict(b1=0.9, b2=0.99, eps=1e-3, weight_decay=WD)


CASES = {
    "sgd": ("sgd", dict(momentum=0.9, weight_decay=WD),
            lambda p, lr: ref.SGD(p, momentum=0.9, weight_decay=WD), 0.05, None),
    "vanilla_sgd": ("vanilla_sgd", dict(weight_decay=WD),
                    lambda p, lr: ref.SGD(p, momentum=0.0, weight_decay=WD), 0.05, None),
    "adam": ("adam", _adam_kw(), lambda p, lr: ref.Adam(p, **_adam_kw()), 0.01, None),
    "amsgrad": ("amsgrad", _adam_kw(), lambda p, lr: ref.Adam(p, amsgrad=True, **_adam_kw()),
                0.01, None),
    "yogi": ("yogi", dict(_adam_kw(), initial_accumulator=1e-6),
             lambda p, lr: ref.Yogi(p, initial_accumulator=1e-6, **_adam_kw()), 0.01,
             lambda r: r.signs_seen >= {-1.0, 1.0}),
    "radam-decoupled": ("radam", dict(eps=1e-3, weight_decay=WD, decoupled=True),
                        lambda p, lr: ref.RAdam(p, eps=1e-3, weight_decay=WD, decoupled=True),
                        0.01, lambda r: r.regimes == {"sgd", "rectified"}),
    "radam-coupled": ("radam", dict(eps=1e-3, weight_decay=WD, decoupled=False),
                      lambda p, lr: ref.RAdam(p, eps=1e-3, weight_decay=WD, decoupled=False),
                      0.01, lambda r: r.regimes == {"sgd", "rectified"}),
    "radam-no-sgd-phase": ("radam", dict(eps=1e-3, weight_decay=WD, degenerated_to_sgd=False),
                           lambda p, lr: ref.RAdam(p, eps=1e-3, weight_decay=WD,
                                                   degenerated_to_sgd=False),
                           0.01, lambda r: r.regimes == {"none", "rectified"}),
    "adabound": ("adabound", dict(final_lr=0.1, gamma=0.1, eps=1e-3, weight_decay=WD),
                 lambda p, lr: ref.AdaBound(p, base_lr=lr, final_lr=0.1, gamma=0.1, eps=1e-3,
                                            weight_decay=WD),
                 0.01, lambda r: r.hit_lower and r.hit_upper),
    "diffgrad": ("diffgrad", dict(eps=1e-3, weight_decay=WD),
                 lambda p, lr: ref.DiffGrad(p, eps=1e-3, weight_decay=WD), 0.01, None),
    "diffgrad-frozen": ("diffgrad", dict(eps=1e-3, weight_decay=WD, frozen_dfc=True),
                        lambda p, lr: ref.DiffGrad(p, eps=1e-3, weight_decay=WD, frozen_dfc=True),
                        0.01, None),
    "adai-coupled": ("adai", dict(b0=0.1, b2=0.99, eps=1e-3, weight_decay=WD, decoupled=False),
                     lambda p, lr: ref.Adai(p, weight_decay=WD, decoupled=False), 0.1,
                     lambda r: r.hit_zero and r.hit_cap),
    "adai-decoupled": ("adai", dict(b0=0.1, b2=0.99, eps=1e-3, weight_decay=WD, decoupled=True),
                       lambda p, lr: ref.Adai(p, weight_decay=WD, decoupled=True), 0.1,
                       lambda r: r.hit_zero and r.hit_cap),
    "pnm-decoupled": ("pnm", dict(b1=0.9, b0=0.7, weight_decay=WD, decoupled=True),
                      lambda p, lr: ref.PNM(p, b1=0.9, b0=0.7, weight_decay=WD, decoupled=True),
                      0.05, None),
    "pnm-coupled": ("pnm", dict(b1=0.9, b0=0.7, weight_decay=WD, decoupled=False),
                    lambda p, lr: ref.PNM(p, b1=0.9, b0=0.7, weight_decay=WD, decoupled=False),
                    0.05, None),
    "lookahead": ("lookahead", dict(k=5, alpha=0.5, momentum=0.9, weight_decay=WD),
                  lambda p, lr: ref.Lookahead(ref.SGD(p, momentum=0.9, weight_decay=WD), k=5,
                                              alpha=0.5),
                  0.05, lambda r: r.syncs == N_STEPS // 5),
}

MODES = ("constant", "schedule", "get-schedule")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference_float64(x64, case, mode):
    """25 steps equal the numpy reference to 1e-12 (constant rate, schedule, and via get)."""
    name, kwargs, make_ref, lr0, exercised = CASES[case]
    theta0, scale, noise = _problem()
    if mode == "constant":
        lr_arg, lrs = lr0, [lr0] * N_STEPS
    else:
        lr_arg, lrs = _schedule(lr0)
    if mode == "get-schedule":
        tx = optim.get(name, learning_rate=lr_arg, **kwargs)
    else:
        tx = getattr(optim, name)(learning_rate=lr_arg, **kwargs)

    got = _run_optax(tx, theta0, scale, noise)
    reference = make_ref({k: v.copy() for k, v in theta0.items()}, lr0)
    want = _run_reference(reference, lrs, scale, noise)

    if exercised is not None:
        assert exercised(reference), "the test problem no longer exercises this optimizer's branches"
    assert np.max(np.abs(want[-1]["w"] - theta0["w"])) > 1e-3  # It moved.
    for t, (g, w) in enumerate(zip(got, want)):
        chex.assert_trees_all_close(g, w, rtol=TOL, atol=TOL, custom_message=f"step {t + 1}")


@pytest.mark.parametrize("via_get", [False, True])
def test_lookahead_custom_inner_float64(x64, via_get):
    """Lookahead around Adam (k=3, α=0.3) equals the reference wrapper around numpy Adam."""
    theta0, scale, noise = _problem(seed=1)
    inner = optim.adam(learning_rate=0.01, **_adam_kw())
    if via_get:
        tx = optim.get("lookahead", inner=inner, k=3, alpha=0.3)
    else:
        tx = optim.lookahead(inner=inner, k=3, alpha=0.3)
    got = _run_optax(tx, theta0, scale, noise)
    reference = ref.Lookahead(ref.Adam({k: v.copy() for k, v in theta0.items()}, **_adam_kw()),
                              k=3, alpha=0.3)
    want = _run_reference(reference, [0.01] * N_STEPS, scale, noise)
    assert reference.syncs == N_STEPS // 3
    chex.assert_trees_all_close(got, want, rtol=TOL, atol=TOL)


def test_optax_amsgrad_and_radam_differ_from_the_references(x64):
    """Why AMSGrad and RAdam are written out: optax's versions miss the reference by far more
    than the tolerance on the same problem (max of v̂ vs max of v; ε on √v̂ vs on √v)."""
    theta0, scale, noise = _problem()
    cases = [
        (optax.chain(optax.add_decayed_weights(WD),
                     optax.scale_by_amsgrad(b1=0.9, b2=0.99, eps=1e-3),
                     optax.scale_by_learning_rate(0.01)),
         ref.Adam({k: v.copy() for k, v in theta0.items()}, amsgrad=True, **_adam_kw())),
        (optax.chain(optax.scale_by_radam(eps=1e-3), optax.add_decayed_weights(WD),
                     optax.scale_by_learning_rate(0.01)),
         ref.RAdam({k: v.copy() for k, v in theta0.items()}, eps=1e-3, weight_decay=WD)),
    ]
    for tx, reference in cases:
        got = _run_optax(tx, theta0, scale, noise)[-1]
        want = _run_reference(reference, [0.01] * N_STEPS, scale, noise)[-1]
        assert max(np.max(np.abs(got[k] - want[k])) for k in got) > 1e-6


# ------------------------------------------------------------------------------------------------
# Registry-driven contract, float32 under jit.

QUAD_LR = {"sgd": 0.1, "vanilla_sgd": 0.1, "adai": 0.1, "pnm": 0.1, "lookahead": 0.1}


def _quadratic_loss(params):
    curv = jnp.linspace(0.5, 2.0, 6, dtype=params["x"].dtype)
    return 0.5 * jnp.sum(curv * params["x"] ** 2) + 0.75 * jnp.sum(params["y"] ** 2)


def _quad_params(dtype=jnp.float32):
    return {"x": jnp.full((6,), 2.0, dtype), "y": jnp.ones((2, 3), dtype)}


def _make_step(tx):
    def step(params, state):
        grads = jax.grad(_quadratic_loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates
    return step


@pytest.mark.parametrize("name", optim.NAMES)
def test_registry_contract(name):
    """Converges on a quadratic, compiles once, jit equals eager, keeps dtypes, injects the rate."""
    chex.clear_trace_counter()  # The counter is keyed by the step function's code, shared by cases.
    lr = QUAD_LR.get(name, 0.05)
    tx = optim.get(name, learning_rate=lr, weight_decay=1e-4)
    params = _quad_params()
    state = tx.init(params)
    dtypes = jax.tree.map(lambda x: x.dtype, state)
    step = jax.jit(chex.assert_max_traces(_make_step(tx), n=1))

    # jit equals eager over a few steps (float32: tolerance for XLA's fusion).
    p_jit, s_jit, p_eager, s_eager = params, state, params, state
    for _ in range(4):
        p_jit, s_jit, u = step(p_jit, s_jit)
        p_eager, s_eager, _ = _make_step(tx)(p_eager, s_eager)
    chex.assert_trees_all_close(p_jit, p_eager, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal_dtypes(u, params)
    assert jax.tree.map(lambda x: x.dtype, s_jit) == dtypes
    chex.assert_trees_all_equal_structs(s_jit, state)

    loss0 = float(_quadratic_loss(params))
    p, s = p_jit, s_jit
    for _ in range(400):
        p, s, _ = step(p, s)  # assert_max_traces raises if this recompiles.
    assert float(_quadratic_loss(p)) < 1e-3 * loss0
    chex.assert_tree_all_finite(p)

    # The injected rate is readable and drives the step: zero rate, zero first update (the first,
    # because a Lookahead synchronisation moves the weights whatever the inner rate).
    np.testing.assert_allclose(float(s.hyperparams["learning_rate"]), lr, rtol=1e-6)
    frozen = state._replace(
        hyperparams={**state.hyperparams, "learning_rate": jnp.zeros([], jnp.float32)})
    _, _, u0 = step(params, frozen)
    chex.assert_trees_all_equal(u0, jax.tree.map(jnp.zeros_like, u0))


@pytest.mark.parametrize("name", optim.NAMES)
def test_schedule_logged_and_chain(name):
    """A schedule shows up in hyperparams, and the optimizer composes inside optax.chain."""
    lr = QUAD_LR.get(name, 0.05)
    schedule = lambda count: lr * 0.5 ** count  # noqa: E731
    tx = optax.chain(optax.clip_by_global_norm(100.0), optim.get(name, learning_rate=schedule))
    params = _quad_params()
    state = tx.init(params)
    step = jax.jit(_make_step(tx))
    for _ in range(3):
        params, state, _ = step(params, state)
    # After n updates the logged rate is the one used by the last update, schedule(n - 1).
    np.testing.assert_allclose(float(state[1].hyperparams["learning_rate"]), lr * 0.25, rtol=1e-6)


@pytest.mark.parametrize("name", optim.NAMES)
def test_bfloat16_dtypes_kept(name):
    """bfloat16 params give bfloat16 updates and an unchanged state dtype tree."""
    tx = optim.get(name, learning_rate=QUAD_LR.get(name, 0.05), weight_decay=1e-4)
    params = _quad_params(jnp.bfloat16)
    state = tx.init(params)
    new_params, new_state, updates = jax.jit(_make_step(tx))(params, state)
    chex.assert_trees_all_equal_dtypes(updates, params)
    chex.assert_trees_all_equal_dtypes(new_params, params)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)


# ------------------------------------------------------------------------------------------------
# Registry contents.

def test_paper_learning_rates():
    """The table of METHOD.md §5, written out by hand."""
    mnist = {"sgd": 0.1, "vanilla_sgd": 0.1, "adai": 0.1, "pnm": 0.1, "lookahead": 0.1,
             "adam": 1e-3, "amsgrad": 1e-3, "adabound": 1e-3, "yogi": 1e-3, "radam": 1e-3,
             "diffgrad": 1e-3}
    cifar = {"vanilla_sgd": 1.0, "adai": 1.0, "pnm": 1.0, "sgd": 0.1, "lookahead": 0.1,
             "adam": 1e-3, "amsgrad": 1e-3, "adabound": 1e-3, "yogi": 1e-3, "radam": 1e-3,
             "diffgrad": 1e-3}
    assert set(optim.NAMES) == set(mnist)
    for name in optim.NAMES:
        for ds in ("mnist", "fashion_mnist", "avila"):
            assert optim.paper_learning_rate(name, ds) == mnist[name]
        for ds in ("cifar10", "cifar100"):
            assert optim.paper_learning_rate(name, ds) == cifar[name]
    assert optim.paper_hyperparams("pnm", "cifar10") == {"learning_rate": 1.0, "weight_decay": 5e-4}


def test_describe_lists_all_with_defaults():
    records = optim.describe()
    assert [r["name"] for r in records] == list(optim.NAMES)
    by_name = {r["name"]: r for r in records}
    assert by_name["adai"]["defaults"] == {"b0": 0.1, "b2": 0.99, "eps": 1e-3, "weight_decay": 0.0,
                                           "decoupled": False}
    assert by_name["pnm"]["defaults"] == {"b1": 0.9, "b0": 1.0, "weight_decay": 0.0,
                                          "decoupled": True}
    assert by_name["adabound"]["defaults"] == {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999,
                                               "final_lr": 0.1, "gamma": 1e-3, "eps": 1e-8,
                                               "weight_decay": 0.0}
    assert by_name["lookahead"]["defaults"]["k"] == 5
    assert by_name["lookahead"]["defaults"]["alpha"] == 0.5
    for r in records:
        assert r["reference"] and r["paper_weight_decay"] == 5e-4
        assert set(r["paper_learning_rate"]) == {"mnist", "fashion_mnist", "cifar10", "cifar100",
                                                 "avila"}


# ------------------------------------------------------------------------------------------------
# Bad input.

def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError) as info:
        optim.get("adamw", learning_rate=0.1)
    for name in optim.NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="Unknown dataset"):
        optim.paper_learning_rate("sgd", "imagenet")


@pytest.mark.parametrize("name", optim.NAMES)
def test_negative_learning_rate(name):
    with pytest.raises(ValueError, match="learning_rate"):
        optim.get(name, learning_rate=-0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        optim.get(name, learning_rate=lambda count: -0.1 + 0.0 * count)


BAD_HYPERPARAMS = [
    ("sgd", dict(momentum=1.0), "momentum"),
    ("sgd", dict(weight_decay=-1e-4), "weight_decay"),
    ("adam", dict(b1=1.0), "b1"),
    ("adam", dict(b2=-0.1), "b2"),
    ("amsgrad", dict(b2=1.0), "b2"),
    ("yogi", dict(b1=-0.5), "b1"),
    ("yogi", dict(initial_accumulator=0.0), "initial_accumulator"),
    ("radam", dict(b1=1.5), "b1"),
    ("diffgrad", dict(b2=1.0), "b2"),
    ("diffgrad", dict(eps=-1e-8), "eps"),
    ("adabound", dict(b1=1.0), "b1"),
    ("adabound", dict(gamma=1.0), "gamma"),
    ("adabound", dict(final_lr=-0.1), "final_lr"),
    ("adabound", dict(learning_rate=0.0), "initial"),
    ("adai", dict(b0=-0.1), "b0"),
    ("adai", dict(b2=1.0), "b2"),
    ("adai", dict(eps=0.0), "eps"),
    ("adai", dict(eps=1.0), "eps"),
    ("pnm", dict(b0=-1.0), "b0"),
    ("pnm", dict(b1=1.0), "b1"),
    ("lookahead", dict(alpha=1.5), "alpha"),
    ("lookahead", dict(k=0), "k="),
]


@pytest.mark.parametrize("name,kwargs,word", BAD_HYPERPARAMS)
def test_hyperparameters_out_of_range(name, kwargs, word):
    kwargs = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=word):
        optim.get(name, **kwargs)
    with pytest.raises(ValueError, match=word):
        getattr(optim, name)(**kwargs)


def test_edge_values_accepted():
    """The ends of the valid ranges that the references allow."""
    optim.get("pnm", learning_rate=0.1, b0=0.0)
    optim.get("adai", learning_rate=0.1, b0=0.0)
    optim.get("adam", learning_rate=0.0, b1=0.0, b2=0.0)
    optim.get("lookahead", learning_rate=0.1, alpha=1.0, k=1)


def test_bad_keywords_and_flags():
    with pytest.raises(TypeError, match="paper_learning_rate"):
        optim.get("sgd")
    with pytest.raises(TypeError, match="unknown keyword"):
        optim.get("adam", beta1=0.9)
    with pytest.raises(TypeError, match="decoupled"):
        optim.get("pnm", learning_rate=0.1, decoupled="yes")
    with pytest.raises(ValueError, match="inner"):
        optim.get("lookahead", learning_rate=0.1, inner=optim.sgd(0.1))
    with pytest.raises(ValueError, match="momentum"):
        optim.lookahead(inner=optim.sgd(0.1), momentum=0.5)
    with pytest.raises(TypeError, match="learning_rate"):
        optim.lookahead()


def test_update_without_params_is_a_clear_error():
    tx = optim.get("radam", learning_rate=1e-3)
    params = _quad_params()
    state = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(jax.grad(_quadratic_loss)(params), state, params=None)


def test_lookahead_rate_readable_with_custom_inner():
    """The documented path to the inner rate when Lookahead wraps an optimizer from `get`."""
    inner = optim.get("adam", learning_rate=lambda count: 1e-3 * 0.5 ** count)
    tx = optim.get("lookahead", inner=inner, k=2)
    params = _quad_params()
    state = tx.init(params)
    step = jax.jit(_make_step(tx))
    for _ in range(3):
        params, state, _ = step(params, state)
    assert "learning_rate" not in state.hyperparams  # No rate of its own: it is the inner one's.
    np.testing.assert_allclose(float(state.inner_state.inner_state.hyperparams["learning_rate"]),
                               1e-3 * 0.25, rtol=1e-6)
    np.testing.assert_allclose(float(state.hyperparams["alpha"]), 0.5)
