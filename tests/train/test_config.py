"""Config parsing, validation and resolution; presets; the learning-rate schedule."""

import dataclasses

import numpy as np
import pytest

from train import config as C
from train import data, loop, presets


def test_parse_value_uses_the_field_type():
    assert C.parse_value("epochs", "7") == 7
    assert C.parse_value("epochs", "none") is None
    assert C.parse_value("learning_rate", "0.05") == 0.05
    assert C.parse_value("learning_rate", "null") is None
    assert C.parse_value("random_labels", "yes") is True
    assert C.parse_value("init_control", "False") is False
    assert C.parse_value("lr_drop_epochs", "80,160") == (80, 160)
    assert C.parse_value("lr_drop_fractions", "(0.25, 0.5)") == (0.25, 0.5)
    assert C.parse_value("spectrum_epochs", "") == ()
    assert C.parse_value("dataset", "cifar10") == "cifar10"


@pytest.mark.parametrize("key,value,expected", [
    ("epochs", "2.5", "int or None"),
    ("k", "many", "int"),
    ("random_labels", "maybe", "bool"),
    ("learning_rate", "nan", "float or None"),
    ("lr_drop_epochs", "1,x", "tuple of int"),
])
def test_wrong_type_names_field_type_and_value(key, value, expected):
    with pytest.raises(C.ConfigError) as err:
        C.apply_overrides(C.Config(), {key: value})
    msg = str(err.value)
    assert key in msg and expected in msg and repr(value) in msg


def test_typed_python_values_are_checked_too():
    assert C.apply_overrides(C.Config(), {"learning_rate": 1}).learning_rate == 1.0
    assert C.apply_overrides(C.Config(), {"spectrum_epochs": [1, 2]}).spectrum_epochs == (1, 2)
    with pytest.raises(C.ConfigError, match="'k' expects int"):
        C.apply_overrides(C.Config(), {"k": 1.5})
    with pytest.raises(C.ConfigError, match="'epochs' expects int"):
        C.apply_overrides(C.Config(), {"epochs": True})


def test_unknown_key_lists_valid_fields_and_suggests():
    with pytest.raises(C.ConfigError) as err:
        C.parse_assignments(["epoch=3"])
    msg = str(err.value)
    assert "did you mean 'epochs'" in msg
    for name in C.FIELD_NAMES:
        assert name in msg


def test_assignment_without_equals_is_an_error():
    with pytest.raises(C.ConfigError, match="key=value"):
        C.parse_assignments(["epochs"])
    assert C.parse_assignments(["--batch-size=64", "k=5"]) == {"batch_size": "64", "k": "5"}


@pytest.mark.parametrize("changes,fragment", [
    ({"dataset": "svhn"}, "unknown dataset"),
    ({"model": "vgg"}, "unknown model"),
    ({"optimizer": "adamw"}, "unknown optimizer"),
    ({"depth": 2}, "depth=2 is not used by model 'lenet5'"),
    ({"model": "fcn"}, "needs depth"),
    ({"random_labels": True, "label_noise": 0.4}, "exclusive"),
    ({"label_noise": 1.5}, "label_noise must lie in"),
    ({"epochs": None}, "set epochs or max_steps"),
    ({"lr_drop_fractions": (0.4, 1.0)}, "strictly between 0 and 1"),
    ({"spectrum_epochs": (5,)}, "outside 1..epochs=3"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"micro_batch": 0}, "micro_batch must be >= 1"),
    ({"model": "linear", "depth": 1, "width": 4, "batchnorm": True, "micro_batch": 32}, "with BatchNorm"),
    ({"dataset": "cifar10", "model": "resnet18", "micro_batch": 32}, "with BatchNorm"),
    ({"model": "resnet18"}, "CIFAR"),
    ({"train_size": 600}, "hessian_samples=1000 exceeds train_size=600"),
    ({"train_size": 100, "hessian_samples": 100}, "batch_size=128 exceeds train_size=100"),
    ({"dataset": "avila", "model": "fcn", "depth": 1, "width": 4, "augment": True}, "augment"),
])
def test_validation_names_the_problem(changes, fragment):
    with pytest.raises(C.ConfigError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        C.validate(dataclasses.replace(C.Config(), **changes))


def test_resolve_applies_the_written_rules():
    # METHOD.md §5: SGD 0.1 and Adam 1e-3 on MNIST; Vanilla SGD 1 on CIFAR.
    assert C.resolve(C.Config()).learning_rate == 0.1
    assert C.resolve(C.Config(optimizer="adam")).learning_rate == 1e-3
    assert C.resolve(C.Config(dataset="cifar10", optimizer="vanilla_sgd")).learning_rate == 1.0
    # Lanczos rule max(3k, k + 100), clamped to the parameter count.
    assert C.resolve(C.Config(k=100)).lanczos_steps == 300
    assert C.resolve(C.Config(k=10, hessian_samples=100)).lanczos_steps == 110
    assert C.resolve(C.Config(k=10, hessian_samples=100), num_params=50).lanczos_steps == 50
    assert C.resolve(C.Config(dataset="cifar10")).augment is True
    assert C.resolve(C.Config()).augment is False
    assert C.resolve(C.Config(model="fcn", depth=1, width=5)).activation == "relu"
    assert C.resolve(C.Config(learning_rate=0.3)).learning_rate == 0.3


@pytest.mark.parametrize("changes,fragment", [
    ({"k": 10, "lanczos_steps": 10}, r"lanczos_steps \(10\) must exceed k \(10\)"),
    ({"hessian_samples": 20, "k": 100}, "Gauss-Newton rank by 180"),
    ({"k": 1}, "k must be >= 2"),
    ({"trace_samples": 1}, "trace_samples must be >= 2"),
])
def test_spectrum_fields_are_checked_against_the_model(changes, fragment):
    with pytest.raises(C.ConfigError, match=fragment):
        C.resolve(C.validate(dataclasses.replace(C.Config(), **changes)), num_params=10**6)


def test_resolve_rejects_k_or_steps_above_the_parameter_count():
    with pytest.raises(C.ConfigError, match="k=100 exceeds the model's 80 parameters"):
        C.resolve(C.Config(k=100), num_params=80)
    with pytest.raises(C.ConfigError, match="lanczos_steps=500 exceeds"):
        C.resolve(C.Config(k=100, lanczos_steps=500), num_params=400)


def test_dict_round_trip_and_differences():
    cfg = C.Config(lr_drop_epochs=(80, 160), spectrum_epochs=(1, 2), learning_rate=0.1)
    d = C.to_dict(cfg)
    assert d["lr_drop_epochs"] == [80, 160]
    assert C.from_dict(d) == cfg
    diff = C.differences(cfg, dataclasses.replace(cfg, k=7, seed=3), ignore=C.SPECTRUM_FIELDS)
    assert diff == {"seed": (0, 3)}


EXPECTED_PRESETS = (
    ["default", "resnet18-cifar10-sgd", "fcn-avila", "lenet-mnist-random-labels", "lenet-mnist-noise40",
     "lenet-mnist-noise80", "tiny-fcn-mnist"]
    + [f"lenet-{d}-{o}" for d in ("mnist", "fashion-mnist", "cifar10", "cifar100")
       for o in ("sgd", "vanilla-sgd", "adam", "amsgrad", "adabound", "yogi", "radam", "diffgrad", "adai", "pnm",
                 "lookahead")]
    + [f"fcn-mnist-depth{d}" for d in (1, 2, 4)] + [f"fcn-mnist-width{w}" for w in (10, 50, 100)]
    + [f"lenet-mnist-batch{b}" for b in (128, 512, 640, 768, 1024, 8192, 16384, 32768, 50000, 60000)]
    + [f"lenet-mnist-iters1000-batch{b}" for b in (128, 60000)]
    + [f"lenet-mnist-n{n}" for n in (600, 800, 1000, 3000, 6000, 60000)]
)


def test_every_setting_of_method_has_a_preset():
    missing = [n for n in EXPECTED_PRESETS if n not in presets.names()]
    assert not missing


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_resolves(name):
    cfg = C.resolve(presets.get(name))
    assert cfg.preset == name
    assert cfg.learning_rate > 0 and cfg.lanczos_steps > cfg.k


def test_presets_carry_the_papers_hyperparameters():
    mnist = presets.get("lenet-mnist-sgd")
    assert (mnist.epochs, mnist.batch_size, mnist.weight_decay, mnist.k) == (50, 128, 5e-4, 1000)
    assert mnist.lr_drop_fractions == (0.4, 0.8) and mnist.lr_drop_epochs == ()
    assert mnist.spectrum_epochs == (1, 2, 3, 10, 20, 30)
    assert presets.get("lenet-fashion-mnist-adam").epochs == 200
    assert presets.get("lenet-cifar10-sgd").lr_drop_epochs == (80, 160)
    assert presets.get("lenet-cifar100-sgd").lr_drop_epochs == (100, 150)
    assert presets.get("resnet18-cifar10-sgd").k == 50 and presets.get("fcn-avila").k == 50
    it = presets.get("lenet-mnist-iters1000-batch512")
    assert (it.epochs, it.max_steps, it.batch_size) == (None, 1000, 512)
    assert presets.get("lenet-mnist-noise80").label_noise == 0.8
    assert presets.get("lenet-mnist-n600").train_size == 600 and presets.get("lenet-mnist-n600").hessian_samples == 600
    assert C.resolve(presets.get("lenet-cifar10-pnm")).learning_rate == 1.0


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(C.ConfigError) as err:
        presets.get("lenet-mnist-sdg")
    assert "did you mean lenet-mnist-sgd" in str(err.value)
    assert "tiny-fcn-mnist" in str(err.value) and "resnet18-cifar10-sgd" in str(err.value)


def test_drop_boundaries_follow_the_paper():
    # 50 epochs of 469 steps: drops after epochs 20 and 40 (40% and 80%).
    drops = loop.drop_boundaries(epochs=50, max_steps=None, steps_per_epoch=469, fractions=(0.4, 0.8), drop_epochs=())
    assert drops == [9380, 18760]
    # CIFAR-10: explicit epochs 80 and 160.
    assert loop.drop_boundaries(epochs=200, max_steps=None, steps_per_epoch=391, fractions=(0.4, 0.8),
                                drop_epochs=(80, 160)) == [80 * 391, 160 * 391]
    # 1000 iterations: at steps 400 and 800.
    drops = loop.drop_boundaries(epochs=None, max_steps=1000, steps_per_epoch=469, fractions=(0.4, 0.8), drop_epochs=())
    assert drops == [400, 800]
    # 3 epochs: round(1.2) = 1, round(2.4) = 2.
    assert loop.drop_boundaries(epochs=3, max_steps=None, steps_per_epoch=10, fractions=(0.4, 0.8), drop_epochs=()) == [10, 20]


def test_plan_stops_at_whichever_budget_comes_first():
    assert loop.plan(50, None, 469) == (50, 23450)
    assert loop.plan(None, 1000, 469) == (3, 1000)
    assert loop.plan(2, 1000, 469) == (2, 938)
    assert data.num_batches(60000, 128, False) == 469 and data.num_batches(60000, 128, True) == 468


def test_lr_schedule_values():
    sched = loop.lr_schedule(0.1, [10, 20], 0.1)
    got = np.array([float(sched(s)) for s in (0, 9, 10, 19, 20, 1000)])
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    # Coinciding boundaries multiply (two drops at once).
    np.testing.assert_allclose(float(loop.lr_schedule(1.0, [5, 5], 0.5)(5)), 0.25, rtol=1e-6)


def test_hessian_samples_all_is_the_whole_training_set_recorded_as_its_count(data_dir):
    from train import presets
    from train.experiment import build_experiment

    assert C.parse_value("hessian_samples", "all") == "all"
    assert C.parse_value("hessian_samples", "2000") == 2000
    cfg = C.apply_overrides(presets.get("tiny-fcn-mnist"), {"hessian_samples": "all", "data_dir": str(data_dir)})
    C.validate(cfg)  # "all" passes validation (the training set's size is checked when the data is loaded)
    exp = build_experiment(cfg, False)
    assert exp.cfg.hessian_samples == len(exp.ds.y_train) == 512
    np.testing.assert_array_equal(exp.hessian.indices, np.arange(512))
    with pytest.raises(C.ConfigError, match="hessian_samples must be a count >= 1 or 'all'"):
        C.validate(C.apply_overrides(C.Config(), {"hessian_samples": "everything"}))
