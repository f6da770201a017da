"""Tests for train.models: parameter counts in closed form, shapes, train/eval behaviour, one SGD step, and
agreement of the convolution / pooling implementations (values, gradients, Hessian-vector products)
with each other and with a float64 numpy reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from train import models
from train.models import layers


# ------------------------------------------------------------------------------- numpy references
def np_conv2d(x, k, b, stride, pads):
    """Direct float64 cross-correlation, one output position at a time (independent of both impls)."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), pads[0], pads[1], (0, 0)))
    k = np.asarray(k, np.float64)
    kh, kw = k.shape[:2]
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, k.shape[-1]))
    for h in range(ho):
        for w in range(wo):
            win = x[:, h * stride : h * stride + kh, w * stride : w * stride + kw, :]
            y[:, h, w, :] = np.einsum("nijc,ijco->no", win, k)
    return y + np.asarray(b, np.float64)


def np_max_pool(x, k):
    n, h, w, c = x.shape
    y = np.full((n, h // k, w // k, c), -np.inf)
    for i in range(h // k):
        for j in range(w // k):
            y[:, i, j, :] = x[:, i * k : (i + 1) * k, j * k : (j + 1) * k, :].max(axis=(1, 2))
    return y


CONV_CASES = [  # (input shape, kernel shape, stride, padding)
    ((2, 8, 8, 1), (5, 5, 1, 3), 1, 2),
    ((2, 7, 9, 3), (3, 3, 3, 4), 2, 1),
    ((1, 6, 6, 2), (1, 1, 2, 5), 2, 0),
    ((2, 9, 9, 2), (3, 3, 2, 2), 2, "SAME"),
    ((1, 10, 10, 6), (5, 5, 6, 4), 1, 0),
]


def _case(shape_x, shape_k, dtype, seed=0):
    kx, kk, kb, kv1, kv2 = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(kx, shape_x, dtype)
    k = jax.random.normal(kk, shape_k, dtype) / np.sqrt(np.prod(shape_k[:3]))
    b = jax.random.normal(kb, shape_k[-1:], dtype)
    v = (jax.random.normal(kv1, shape_x, dtype), jax.random.normal(kv2, shape_k, dtype))
    return x, k, b, v


@pytest.mark.parametrize("shape_x,shape_k,stride,padding", CONV_CASES)
def test_conv_impls_match_numpy_float64(shape_x, shape_k, stride, padding):
    with jax.enable_x64(True):
        x, k, b, _ = _case(shape_x, shape_k, jnp.float64)
        pads = layers.normalize_padding(padding, shape_k[:2], (stride, stride), shape_x[1:3])
        ref = np_conv2d(x, k, b, stride, pads)
        for impl in layers.CONV_IMPLS:
            y = layers.conv2d(x, k, b, strides=stride, padding=padding, impl=impl)
            chex.assert_shape(y, ref.shape)
            np.testing.assert_allclose(np.asarray(y), ref, rtol=0, atol=1e-12)


def _loss(impl, stride, padding):
    # A smooth non-quadratic scalar, so the Hessian-vector product is non-trivial.
    def f(x, k, b):
        y = layers.conv2d(x, k, b, strides=stride, padding=padding, impl=impl)
        return jnp.sum(jnp.tanh(y) ** 2) + 0.1 * jnp.sum(y**3) / y.size
    return f


def _grad_and_hvp(impl, stride, padding, x, k, b, v):
    f = _loss(impl, stride, padding)
    g = jax.grad(f, argnums=(0, 1, 2))

    @jax.jit  # one compilation instead of hundreds of eager dispatches
    def run(x, k, b, v):
        return f(x, k, b), g(x, k, b), jax.jvp(lambda x, k: g(x, k, b), (x, k), v)[1]

    return run(x, k, b, v)


@pytest.mark.parametrize("shape_x,shape_k,stride,padding", CONV_CASES)
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.float64, 1e-12)])
def test_conv_impls_agree_in_value_gradient_and_hvp(shape_x, shape_k, stride, padding, dtype, tol):
    # "highest": on GPUs the default float32 matmul/convolution precision is TF32.
    with jax.enable_x64(dtype == jnp.float64), jax.default_matmul_precision("highest"):
        x, k, b, v = _case(shape_x, shape_k, dtype)
        a = _grad_and_hvp("xla", stride, padding, x, k, b, v)
        scale = max(float(jnp.max(jnp.abs(t))) for t in jax.tree.leaves(a))
        for impl in ("slices", "banded"):
            s = _grad_and_hvp(impl, stride, padding, x, k, b, v)
            chex.assert_trees_all_close(s, a, atol=tol * scale, rtol=0)
            chex.assert_trees_all_equal_dtypes(s, a)


def test_max_pool_impls_match_numpy():
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 9, 8, 3)))
    for impl in ("reduce_window", "reshape"):
        np.testing.assert_array_equal(np.asarray(layers.max_pool2d(jnp.asarray(x), 2, impl=impl)), np_max_pool(x, 2))


def test_auto_choice():
    conv = layers.Conv2D(1, 2, 3, conv_impl="auto", rngs=nnx.Rngs(0))
    assert conv.conv_impl == "auto" and conv.backend == jax.default_backend()
    assert layers.resolve_pool_impl("auto") == ("reshape" if conv.backend == "cpu" else "reduce_window")
    choose = layers.choose_conv_impl
    # LeNet-5's convolutions on CPU: band matrices of 5*28*1 x 28*6 and 5*14*6 x 10*16 entries.
    assert layers.band_entries(28, (5, 5, 1, 6), 1, (2, 2)) == 140 * 168
    assert choose("auto", "cpu", 28, (5, 5, 1, 6), 1, (2, 2)) == "banded"
    assert choose("auto", "cpu", 14, (5, 5, 6, 16), 1, (0, 0)) == "banded"
    assert choose("auto", "cpu", 32, (5, 5, 3, 6), 1, (0, 0)) == "banded"  # LeNet-5 on CIFAR
    assert choose("auto", "cpu", 32, (3, 3, 64, 64), 1, (1, 1)) == "xla"  # a ResNet layer: band too large
    assert choose("auto", "cpu", 8, (1, 1, 16, 16), 2, (0, 0)) == "xla"  # a 1x1 shortcut: band too sparse
    assert choose("auto", "gpu", 28, (5, 5, 1, 6), 1, (2, 2)) == "xla"
    assert choose("slices", "gpu", 28, (5, 5, 1, 6), 1, (2, 2)) == "slices"
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        layers.Conv2D(1, 2, 3, conv_impl="fft", rngs=nnx.Rngs(0))


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _split_loss(model, x, y):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return params, lambda p: _ce(nnx.merge(graphdef, p, rest)(x), y)


def test_lenet_impls_agree_in_gradient_and_hvp():
    """The same LeNet-5 parameters give the same loss, gradient and HVP under every conv/pool combination."""
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    y = jnp.arange(4) % 10
    model = models.build("lenet5", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(3),
                         conv_impl="xla", pool_impl="reduce_window")
    params, _ = _split_loss(model, x, y)
    v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(7), p.shape), params)
    results = []
    with jax.default_matmul_precision("highest"):
        for conv_impl, pool_impl in [("xla", "reduce_window"), ("banded", "reshape")]:
            model.set_attributes(conv_impl=conv_impl, pool_impl=pool_impl)
            params, loss = _split_loss(model, x, y)
            g = jax.grad(loss)
            results.append(jax.jit(lambda p, v: (loss(p), g(p), jax.jvp(g, (p,), (v,))[1]))(params, v))
    for r in results[1:]:
        chex.assert_trees_all_close(r, results[0], atol=2e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ architectures
def lenet_count(h, w, c, k=10):
    pad = 2 if (h, w) == (28, 28) else 0
    h2, w2 = ((h + 2 * pad - 4) // 2 - 4) // 2, ((w + 2 * pad - 4) // 2 - 4) // 2
    return (25 * c * 6 + 6) + (25 * 6 * 16 + 16) + (16 * h2 * w2 * 120 + 120) + (120 * 84 + 84) + (84 * k + k)


def fcn_count(din, depth, width, k, bn=False):
    dims = [din] + [width] * depth + [k]
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:])) + (2 * width * depth if bn else 0)


def resnet18_count(cin, k):
    conv = lambda ci, co, ks: ks * ks * ci * co
    bn = lambda c: 2 * c
    total = conv(cin, 64, 3) + bn(64)
    c = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for b in range(2):
            s = stride if b == 0 else 1
            total += conv(c, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)
            if s != 1 or c != cout:
                total += conv(c, cout, 1) + bn(cout)
            c = cout
    return total + 512 * k + k


@pytest.mark.parametrize("name,shape,kwargs,expected", [
    ("lenet5", (28, 28, 1), {}, lenet_count(28, 28, 1)),
    ("lenet5", (32, 32, 3), {}, lenet_count(32, 32, 3)),
    ("fcn", (28, 28, 1), dict(depth=1, width=100), fcn_count(784, 1, 100, 10)),
    ("fcn", (28, 28, 1), dict(depth=4, width=100), fcn_count(784, 4, 100, 10)),
    ("fcn", (10,), dict(depth=2, width=30), fcn_count(10, 2, 30, 10)),
    ("linear", (28, 28, 1), dict(depth=3, width=50), fcn_count(784, 3, 50, 10)),
    ("linear", (28, 28, 1), dict(depth=3, width=50, batchnorm=True, activation="relu"), fcn_count(784, 3, 50, 10, bn=True)),
])
def test_parameter_counts_and_output_shapes(name, shape, kwargs, expected):
    model = models.build(name, num_classes=10, input_shape=shape, rngs=nnx.Rngs(0), **kwargs)
    assert models.count_params(model) == expected
    out = model(jnp.zeros((3,) + shape))
    chex.assert_shape(out, (3, 10))
    assert out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_paper_parameter_counts():
    assert lenet_count(28, 28, 1) == 61_706 and lenet_count(32, 32, 3) == 62_006
    assert resnet18_count(3, 10) == 11_173_962  # the pytorch-cifar ResNet18 figure


def test_torch_init_bounds():
    """PyTorch's default init: weights and biases uniform in +-1/sqrt(fan_in)."""
    model = models.build("lenet5", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0))
    for layer, fan_in in [(model.conv1, 25), (model.conv2, 150), (model.fc1, 400), (model.fc3, 84)]:
        bound = 1 / np.sqrt(fan_in)
        for p in (layer.kernel[...], layer.bias[...]):
            assert float(jnp.max(jnp.abs(p))) <= bound
        assert float(jnp.max(jnp.abs(layer.kernel[...]))) > 0.9 * bound  # uniform, not a narrow normal


def test_build_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="valid names.*fcn.*lenet5.*linear.*resnet18"):
        models.build("vgg", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="does not take these options"):
        models.build("lenet5", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0), width=3)
    with pytest.raises(ValueError, match="activation None or 'relu'"):
        models.build("linear", num_classes=10, input_shape=(4,), rngs=nnx.Rngs(0), activation="tanh")


@pytest.fixture(scope="module")
def resnet():
    return models.build("resnet18", num_classes=10, input_shape=(8, 8, 3), rngs=nnx.Rngs(0), conv_impl="xla")


def test_resnet18_count_shape_and_batchnorm_modes(resnet):
    assert models.count_params(resnet) == resnet18_count(3, 10)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3)) * 3 + 1
    with jax.default_matmul_precision("highest"):  # TF32 on GPUs would blur the eval-mode identity below
        _check_batchnorm_modes(resnet, x)


def _check_batchnorm_modes(resnet, x):
    stats = lambda: [np.array(a) for a in jax.tree.leaves(nnx.state(resnet, nnx.BatchStat))]
    before = stats()
    resnet.eval()
    e_batch = resnet(x)
    e_single = resnet(x[:1])
    chex.assert_trees_all_equal(stats(), before)  # eval never updates statistics
    resnet.train()
    t_batch = resnet(x)
    t_single_in_other_batch = resnet(jnp.concatenate([x[:1], -x[1:]]))[0]
    resnet.eval()
    chex.assert_shape(e_batch, (4, 10))
    # Eval: running statistics, so an example's logits do not depend on its batch.
    np.testing.assert_allclose(e_single[0], e_batch[0], atol=1e-4)  # GPU kernels differ per batch size
    # Train: batch statistics, so they do; and the running statistics moved.
    assert float(jnp.max(jnp.abs(t_batch[0] - t_single_in_other_batch))) > 1e-3
    assert float(jnp.max(jnp.abs(t_batch - e_batch))) > 1e-3
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(stats(), before)) > 1e-3


@pytest.mark.parametrize("name,shape,kwargs", [
    ("lenet5", (28, 28, 1), {}),
    ("lenet5", (32, 32, 3), dict(conv_impl="xla", pool_impl="reduce_window")),
    ("fcn", (28, 28, 1), dict(depth=2, width=20)),
    ("linear", (10,), dict(depth=3, width=16, batchnorm=True)),
    ("resnet18", (8, 8, 3), None),
])
def test_one_sgd_step_reduces_the_loss(name, shape, kwargs, request):
    x = jax.random.normal(jax.random.key(1), (16,) + shape)
    y = jnp.arange(16) % 10
    # ResNet-18 is costly to initialise on CPU: reuse the module's instance.
    model = request.getfixturevalue("resnet") if kwargs is None else models.build(
        name, num_classes=10, input_shape=shape, rngs=nnx.Rngs(2), **kwargs)
    model.eval()  # fixed statistics, so the two losses are values of one function
    params, loss = _split_loss(model, x, y)
    value, grad = jax.jit(jax.value_and_grad(loss))(params)
    gnorm = float(optax.tree.norm(grad))
    lr = 0.01 / max(gnorm, 1e-3)  # a short step along the negative gradient
    new = jax.tree.map(lambda p, g: p - lr * g, params, grad)
    decrease = float(value - jax.jit(loss)(new))
    # First order: the decrease is about lr |g|^2; demand at least half of it.
    assert decrease > 0.5 * lr * gnorm**2 > 0


def test_lenet_variants_padding_and_average_pooling():
    """The variants the paper leaves open: no padding gives FINDINGS.md's 44,426 parameters; average pooling
    equals a numpy mean over 2x2 windows of the same activations."""
    from train.models.layers import avg_pool2d

    nopad = models.build("lenet5", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0), conv1_padding=0)
    assert models.count_params(nopad) == 44_426
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 6, 7, 3)), np.float32)
    want = x[:, :6, :6].reshape(2, 3, 2, 3, 2, 3).mean(axis=(2, 4))
    # A float32 mean of 4 values is off by a few roundings of the largest one, in whatever order the CPU sums: an
    # absolute floor, since a mean near 0 has no relative accuracy (1.6e-6 relative, 1.5e-8 absolute seen).
    np.testing.assert_allclose(avg_pool2d(x, 2), want, rtol=1e-6, atol=4 * np.finfo(np.float32).eps * np.abs(x).max())
    avg = models.build("lenet5", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0), pooling="avg")
    mx = models.build("lenet5", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0))
    images = np.asarray(jax.random.normal(jax.random.key(2), (2, 28, 28, 1)), np.float32)
    assert models.count_params(avg) == models.count_params(mx) == 61_706
    assert not np.allclose(avg(images), mx(images))  # same weights, another pooling
    with pytest.raises(ValueError, match="pooling must be 'max' or 'avg'"):
        models.build("lenet5", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0), pooling="min")
