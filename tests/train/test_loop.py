"""The functional loop: model shapes, one step against the stateful NNX model, eval, epochs, every preset."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from train import loop, models, optim

SHAPES = {"mnist": ((28, 28, 1), 10), "fashion_mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10),
          "cifar100": ((32, 32, 3), 100), "avila": ((10,), 12)}


def _batch(shape, n=4, classes=10, seed=0):
    """Random inputs of a shape and labels cycling through the classes."""
    x = np.array(jax.random.normal(jax.random.key(seed), (n, *shape)), np.float32)
    return x, np.arange(n, dtype=np.int32) % classes


@pytest.mark.parametrize("name,kwargs,shape,classes,params", [
    ("lenet5", {}, (28, 28, 1), 10, 61_706),  # METHOD.md §5
    ("lenet5", {}, (32, 32, 3), 10, 62_006),  # METHOD.md §5
    ("fcn", {"depth": 2, "width": 100}, (28, 28, 1), 10, 784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10),
    ("fcn", {"depth": 2, "width": 100}, (10,), 12, 10 * 100 + 100 + 100 * 100 + 100 + 100 * 12 + 12),
    ("linear", {"depth": 1, "width": 7, "activation": None}, (28, 28, 1), 10, 784 * 7 + 7 + 7 * 10 + 10),
])
def test_model_shapes_and_parameter_counts(name, kwargs, shape, classes, params):
    model = models.build(name, num_classes=classes, input_shape=shape, rngs=nnx.Rngs(0), **kwargs)
    assert models.count_params(model) == params
    model_defs, p, rest = loop.split_model(model)
    x, _ = _batch(shape, 3, classes)
    chex.assert_shape(loop.merge(model_defs.eval_def, p, rest)(x), (3, classes))


@pytest.mark.slow
def test_resnet18_shape_and_parameter_count():
    model = models.build("resnet18", num_classes=10, input_shape=(32, 32, 3), rngs=nnx.Rngs(0))
    assert models.count_params(model) == 11_173_962  # the CIFAR ResNet18 of kuangliu/pytorch-cifar
    model_defs, p, rest = loop.split_model(model)
    chex.assert_shape(loop.merge(model_defs.eval_def, p, rest)(_batch((32, 32, 3), 2)[0]), (2, 10))


@pytest.mark.parametrize("name,kwargs,shape", [
    ("lenet5", {}, (28, 28, 1)),
    ("fcn", {"depth": 2, "width": 16}, (28, 28, 1)),
])
def test_one_step_matches_sgd_on_the_stateful_model(name, kwargs, shape):
    # PyTorch SGD with coupled weight decay from zero momentum: θ1 = θ0 − η (∇L(θ0) + wd θ0).
    lr, wd = 0.1, 5e-4
    model = models.build(name, num_classes=10, input_shape=shape, rngs=nnx.Rngs(3), **kwargs)
    x, y = _batch(shape, 8)

    def loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    grads = nnx.grad(loss)(model)  # the stateful NNX path, independent of the split/merge step
    expected = jax.tree.map(lambda p, g: p - lr * (g + wd * p), nnx.state(model, nnx.Param), grads)
    model_defs, params, rest = loop.split_model(model)
    tx = optim.get("sgd", learning_rate=lr, weight_decay=wd)
    state, step_loss, correct = loop.make_train_step(model_defs, tx)(loop.TrainState(params, rest, tx.init(params)),
                                                                     x, y, jax.random.key(0))
    chex.assert_trees_all_close(state.params, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(step_loss, loss(model), rtol=1e-6)
    model.train()
    assert int(correct) == int(np.sum(np.argmax(np.asarray(model(x)), -1) == y))


def test_batchnorm_statistics_leave_the_step():
    model = models.build("linear", num_classes=10, input_shape=(6,), depth=2, width=5, batchnorm=True,
                         activation="relu", rngs=nnx.Rngs(0))
    x, y = _batch((6,), 16)
    model_defs, params, rest = loop.split_model(model)
    before = [np.array(a) for a in jax.tree.leaves(rest)]  # the stateful call below updates these in place
    tx = optim.get("vanilla_sgd", learning_rate=0.0, weight_decay=0.0)
    state, _, _ = loop.make_train_step(model_defs, tx)(loop.TrainState(params, rest, tx.init(params)), x, y,
                                                       jax.random.key(0))
    # The stateful model in training mode updates its running statistics in place: same values.
    model.train()
    model(x)
    expected = nnx.split(model, nnx.Param, ...)[2]
    chex.assert_trees_all_close(state.rest, expected, rtol=1e-6)
    assert not any(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.rest), before))


def test_evaluate_is_mean_cross_entropy_and_accuracy_in_eval_mode():
    model = models.build("linear", num_classes=4, input_shape=(3,), depth=1, width=5, batchnorm=True,
                         rngs=nnx.Rngs(1))
    x, y = _batch((3,), 2500, classes=4, seed=5)
    model_defs, params, rest = loop.split_model(model)
    loss, acc = loop.evaluate(loop.make_eval_step(model_defs), params, rest, x, y, batch_size=1000)
    model.eval()
    logits = np.asarray(model(x), np.float64)
    top = logits.max(1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    np.testing.assert_allclose(loss, -np.mean(logp[np.arange(len(y)), y]), rtol=1e-5)
    assert acc == np.mean(np.argmax(logits, 1) == y)


def test_epoch_metrics_are_the_example_weighted_means():
    # With a zero learning rate the parameters never move, so the epoch's running metrics must equal one
    # evaluation over the same examples (no BatchNorm: train and eval mode agree). 70 = 32 + 32 + 6.
    model = models.build("fcn", num_classes=10, input_shape=(5,), depth=1, width=8, rngs=nnx.Rngs(0))
    x, y = _batch((5,), 70, seed=2)
    model_defs, params, rest = loop.split_model(model)
    tx = optax.sgd(0.0)
    batches = ((x[i:i + 32], y[i:i + 32]) for i in range(0, 70, 32))
    _, stats = loop.train_epoch(loop.make_train_step(model_defs, tx), loop.TrainState(params, rest, tx.init(params)),
                                batches, key=jax.random.key(0), epoch=1, first_step=0, num_steps=3)
    loss, acc = loop.evaluate(loop.make_eval_step(model_defs), params, rest, x, y)
    assert stats["steps"] == 3 and stats["train_acc"] == acc
    np.testing.assert_allclose(stats["train_loss"], loss, rtol=1e-6)


def test_a_nan_batch_names_its_epoch_and_step():
    model = models.build("fcn", num_classes=10, input_shape=(5,), depth=1, width=8, rngs=nnx.Rngs(0))
    x, y = _batch((5,), 40)
    x[24] = np.nan  # batch 3 of size 8
    model_defs, params, rest = loop.split_model(model)
    tx = optax.sgd(0.1)
    batches = ((x[i:i + 8], y[i:i + 8]) for i in range(0, 40, 8))
    with pytest.raises(loop.NonFiniteLossError) as err:
        loop.train_epoch(loop.make_train_step(model_defs, tx), loop.TrainState(params, rest, tx.init(params)), batches,
                         key=jax.random.key(0), epoch=4, first_step=100, num_steps=5)
    assert (err.value.epoch, err.value.step) == (4, 103)
    assert "epoch 4, step 103" in str(err.value) and "learning_rate" in str(err.value)


def test_max_steps_cuts_the_epoch_and_the_lr_is_readable():
    model = models.build("fcn", num_classes=10, input_shape=(5,), depth=1, width=8, rngs=nnx.Rngs(0))
    x, y = _batch((5,), 40)
    model_defs, params, rest = loop.split_model(model)
    tx = optim.get("sgd", learning_rate=loop.lr_schedule(0.1, [2], 0.1), weight_decay=0.0)
    batches = ((x[i:i + 8], y[i:i + 8]) for i in range(0, 40, 8))
    step = loop.make_train_step(model_defs, tx)
    state, stats = loop.train_epoch(step, loop.TrainState(params, rest, tx.init(params)), batches,
                                    key=jax.random.key(0), epoch=1, first_step=0, num_steps=3)
    assert stats["steps"] == 3
    np.testing.assert_allclose(loop.current_lr(state.opt_state), 0.01, rtol=1e-6)  # step 2 ran at 0.1 × 0.1
    assert loop.current_lr(optax.sgd(0.1).init(params)) is None


@pytest.mark.parametrize("micro_batch", [8, 7, 40])
def test_micro_batches_give_the_whole_batch_step(micro_batch):
    # 40 examples in micro-batches of 8 (5 equal parts), of 7 (5 parts and a remainder of 5) or of 40 (no
    # split): momentum SGD's step, the mean loss and the correct count equal the whole batch's (float64).
    with jax.enable_x64(True):
        model = models.build("lenet5", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(3))
        model_defs, params, rest = loop.split_model(model)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        x, y = _batch((28, 28, 1), 40)
        x = x.astype(np.float64)
        tx = optim.get("sgd", learning_rate=0.1, weight_decay=5e-4)
        state = loop.TrainState(params, rest, tx.init(params))
        whole = loop.make_train_step(model_defs, tx)
        micro = loop.make_train_step(model_defs, tx, micro_batch=micro_batch)
        a, b = state, state
        for i in range(2):  # the second step goes through the momentum buffer
            a, loss_a, right_a = whole(a, x, y, jax.random.key(i))
            b, loss_b, right_b = micro(b, x, y, jax.random.key(i))
            np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-13)
            assert int(right_b) == int(right_a)
        chex.assert_trees_all_close(b.params, a.params, rtol=1e-12, atol=1e-15)
        assert not np.array_equal(np.asarray(jax.tree.leaves(a.params)[0]), np.asarray(jax.tree.leaves(params)[0]))


def test_micro_batches_refuse_batchnorm():
    model = models.build("linear", num_classes=10, input_shape=(6,), depth=2, width=5, batchnorm=True,
                         activation="relu", rngs=nnx.Rngs(0))
    x, y = _batch((6,), 16)
    model_defs, params, rest = loop.split_model(model)
    tx = optim.get("vanilla_sgd", learning_rate=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match="without BatchNorm"):
        loop.make_train_step(model_defs, tx, micro_batch=4)(loop.TrainState(params, rest, tx.init(params)), x, y,
                                                            jax.random.key(0))
    with pytest.raises(ValueError, match="micro_batch must be >= 1"):
        loop.make_train_step(model_defs, tx, micro_batch=0)
