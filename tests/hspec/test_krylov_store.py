"""The saved Krylov state (KrylovStore): every piece verified on resume, damage and other identities refused."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hspec
from hspec.krylov_store import KrylovStore
from tests.hspec.conftest import prescribed_matrix

N, S = 120, 2
A = prescribed_matrix(1.0 / np.arange(1, N + 1) ** 1.2, seed=5)
ROW_BYTES = S * N * 8  # one basis row: S starts of n float64 values


def matvec(v):
    return v @ jnp.asarray(A)


def stop(alphas, betas):
    return alphas.shape[1] >= 55  # first true at the check point 60


KW = dict(key=jax.random.key(3), dim=N, dtype=jnp.float64, num_starts=S, stop=stop, check_every=10, basis="host",
          checkpoint_every_s=0)


def run(store=None, max_steps=150, **kw):
    return hspec.lanczos(matvec, 30, max_steps=max_steps, checkpoint_dir=store, **{**KW, **kw})


@pytest.fixture
def saved(x64, tmp_path):
    """A state of 40 steps kept in a folder (the budget ran out before `stop`), and the uninterrupted run."""
    store = tmp_path / "krylov"
    assert run(store, max_steps=40).num_steps == 40 and KrylovStore.saved_steps(store) == 40
    return store, run()


def assert_same(a, b):
    for name in ("alphas", "betas", "ritz_values", "residuals", "weights"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def snapshot(store):
    return {p.name: p.read_bytes() for p in store.iterdir()}


def test_an_undamaged_state_resumes_bit_identically(saved):
    store, plain = saved
    resumed = run(store)
    assert resumed.resumed_steps == 40 and resumed.num_steps == plain.num_steps == 60
    assert_same(resumed, plain)
    assert not store.exists()


def test_a_run_killed_in_its_operator_resumes_bit_identically(x64, tmp_path):
    store, calls = tmp_path / "k", [0]

    def dies_at_product_45(v):
        calls[0] += 1
        if calls[0] == 45:
            raise KeyboardInterrupt
        return matvec(v)

    with pytest.raises(KeyboardInterrupt):
        hspec.lanczos(dies_at_product_45, 30, max_steps=150, checkpoint_dir=store, **KW)
    assert KrylovStore.saved_steps(store) == 44
    assert_same(run(store), run())


def _overwrite_row(dest, source):
    def damage(store):
        with open(store / "basis.bin", "r+b") as f:
            f.seek(source * ROW_BYTES)
            row = f.read(ROW_BYTES)
            f.seek(dest * ROW_BYTES)
            f.write(row)
    return damage


def _zero_row(i):
    def damage(store):
        with open(store / "basis.bin", "r+b") as f:
            f.seek(i * ROW_BYTES)
            f.write(bytes(ROW_BYTES))
    return damage


def _truncate(name, keep):
    def damage(store):
        data = (store / name).read_bytes()
        (store / name).write_bytes(data[: keep(len(data))])
    return damage


def _tamper_state(store):
    """A valid npz whose coefficients were changed after the digest was taken."""
    with np.load(store / "state.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["alphas"] = arrays["alphas"].copy()
    arrays["alphas"][0, 7] += 1e-9
    with open(store / "state.npz", "wb") as f:
        np.savez(f, **arrays)


DAMAGE = {
    "a row overwritten by another": (_overwrite_row(7, 3), "row 7 of basis.bin does not match its sha256"),
    "a row zeroed": (_zero_row(12), "row 12 of basis.bin does not match its sha256"),
    "the start vector zeroed": (_zero_row(0), "row 0 of basis.bin does not match its sha256"),
    "the basis truncated": (_truncate("basis.bin", lambda n: n - 3 * ROW_BYTES // 2), "basis.bin is truncated"),
    "the state truncated": (_truncate("state.npz", lambda n: n // 2), "state.npz is unreadable"),
    "the state not a zip": (lambda s: (s / "state.npz").write_bytes(b"not a zip at all"), "state.npz is unreadable"),
    "the state empty": (lambda s: (s / "state.npz").write_bytes(b""), "state.npz is unreadable"),
    "the state's coefficients changed": (_tamper_state, "state.npz does not match its sha256"),
    "the basis missing": (lambda s: (s / "basis.bin").unlink(), "basis.bin is missing"),
}


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_state_is_refused_in_one_line_and_left_as_it_is(saved, how):
    store, _ = saved
    damage, what = DAMAGE[how]
    damage(store)
    before = snapshot(store)
    with pytest.raises(hspec.KrylovStateError) as err:
        run(store)
    message = str(err.value)
    assert "\n" not in message and what in message
    assert f"the Krylov state in {store} cannot be used" in message
    assert message.endswith(f"delete {store} to start this spectrum afresh")
    assert snapshot(store) == before  # refused, not resumed from nor overwritten
    assert isinstance(err.value, RuntimeError)


def test_a_state_without_digests_is_refused(saved):
    """A state.npz as an older hspec wrote it (no sha256 of its rows, none of itself) cannot be verified."""
    store, _ = saved
    with np.load(store / "state.npz") as f:
        arrays = {k: f[k] for k in ("steps", "alphas", "betas", "shape", "elapsed_s")}
    with open(store / "state.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(hspec.KrylovStateError, match="carries no digest"):
        run(store)


def test_deleting_the_folder_as_the_message_says_starts_afresh(saved):
    store, plain = saved
    _zero_row(5)(store)
    with pytest.raises(hspec.KrylovStateError):
        run(store)
    shutil.rmtree(store)
    fresh = run(store)
    assert fresh.resumed_steps == 0
    assert_same(fresh, plain)


def test_the_budget_truncated_then_grown_state_still_verifies(saved):
    """Truncated to a smaller budget (rows beyond it kept on disk with their digests), then grown again."""
    store, plain = saved
    smaller = run(store, max_steps=35)
    assert smaller.resumed_steps == 35 and KrylovStore.saved_steps(store) == 35
    assert_same(run(store), plain)


IDENTITY = {"network": "lenet", "sample": 1024, "seed": 0, "settings": {"k": 10}}


def test_a_state_of_another_identity_is_refused_naming_the_keys(x64, tmp_path):
    store = tmp_path / "krylov"
    run(store, max_steps=40, checkpoint_identity=IDENTITY)
    assert KrylovStore.progress(store) == {"steps": 40, "identity": IDENTITY}
    before = snapshot(store)
    other = {**IDENTITY, "seed": 1, "settings": {"k": 20}}
    with pytest.raises(hspec.KrylovStateError) as err:
        run(store, checkpoint_identity=other)
    message = str(err.value)
    assert "\n" not in message and str(store) in message
    assert "checkpoint_identity differs in seed, settings (seed: saved 0, this run 1;" in message
    assert f"delete {store} to start this spectrum afresh" in message
    with pytest.raises(hspec.KrylovStateError, match="differs in extra"):
        run(store, checkpoint_identity={**IDENTITY, "extra": True})
    assert snapshot(store) == before
    # The same identity (its dict in any key order) resumes bit-identically.
    resumed = run(store, checkpoint_identity=dict(reversed(list(IDENTITY.items()))))
    assert resumed.resumed_steps == 40
    assert_same(resumed, run())


def test_identity_none_keeps_the_start_vector_and_alpha0_check(x64, tmp_path):
    """Without an identity a state saved with one resumes (the α_0 check decides), and a state of another operator
    is replaced by a fresh run; with the same identity, another operator is refused rather than overwritten."""
    store = tmp_path / "krylov"
    run(store, max_steps=40, checkpoint_identity=IDENTITY)
    assert run(store, max_steps=45).resumed_steps == 40
    b = prescribed_matrix(np.linspace(1, 2, N), seed=9)
    other_op = lambda v: v @ jnp.asarray(b)  # noqa: E731
    with pytest.raises(hspec.KrylovStateError, match="matches this run's but the operator gives another"):
        hspec.lanczos(other_op, 30, max_steps=150, checkpoint_dir=store, checkpoint_identity=IDENTITY, **KW)
    replaced = hspec.lanczos(other_op, 30, max_steps=40, checkpoint_dir=store, **KW)
    assert replaced.resumed_steps == 0
    assert KrylovStore.progress(store) == {"steps": 40, "identity": None}
    with pytest.raises(hspec.KrylovStateError, match="saved without a checkpoint_identity"):
        hspec.lanczos(other_op, 30, max_steps=150, checkpoint_dir=store, checkpoint_identity=IDENTITY, **KW)


def test_an_identity_must_be_a_json_dict(x64, tmp_path):
    with pytest.raises(TypeError, match="JSON-serialisable"):
        run(tmp_path / "k", checkpoint_identity={"sample": object()})
    with pytest.raises(TypeError, match="must be a dict"):
        run(tmp_path / "k", checkpoint_identity=["lenet"])


def test_progress_is_none_without_a_readable_state(tmp_path):
    assert KrylovStore.progress(tmp_path / "absent") is None and KrylovStore.saved_steps(tmp_path) is None
    (tmp_path / "state.npz").write_bytes(b"garbage")
    assert KrylovStore.progress(tmp_path) is None


def test_top_eigenvalues_passes_the_identity_on(x64, tmp_path):
    """Unconverged at its budget, the call keeps its state; the same call under another identity is refused."""
    loss = lambda x: 0.5 * x @ jnp.asarray(A) @ x  # noqa: E731  (its Hessian is A)
    kw = dict(k=20, key=jax.random.key(4), num_steps=25, max_steps=30, tol=1e-12, checkpoint_dir=tmp_path / "t")
    with pytest.warns(hspec.NotConvergedWarning):
        hspec.top_eigenvalues(loss, jnp.zeros(N), checkpoint_identity={"run": "a"}, **kw)
    assert json.dumps(KrylovStore.progress(tmp_path / "t")) == '{"steps": 30, "identity": {"run": "a"}}'
    with pytest.raises(hspec.KrylovStateError, match="differs in run"):
        hspec.top_eigenvalues(loss, jnp.zeros(N), checkpoint_identity={"run": "b"}, **kw)


def test_saved_progress_counts_the_converged_top_k_of_the_kept_state(saved, tmp_path):
    from hspec.krylov_store import saved_progress
    from hspec.ritz import ritz_decomposition

    store, _ = saved
    partial = run(tmp_path / "again", max_steps=40)  # the same 40 steps, taken here
    values, residuals, _, _ = ritz_decomposition(partial.alphas[:1], partial.betas[:1])
    expected = int(np.sum(residuals[0][:10] <= 1e-6 * abs(values[0][0])))
    assert saved_progress(store, k=10, tol=1e-6) == {"steps": 40, "converged": expected}
    assert 0 < expected <= 10
    assert saved_progress(tmp_path / "nothing", k=10, tol=1e-6) is None
    (store / KrylovStore.STATE).write_bytes(b"not a zip")
    assert saved_progress(store, k=10, tol=1e-6) is None
