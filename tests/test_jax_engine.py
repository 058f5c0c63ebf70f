"""The JAX engine: the step compiled once per phase, the attack loop as one loop, state threaded through.

The numbers of the JAX step against torch and tensorflow are checked in
tests/test_trainer.py (cross-backend agreement); these tests check how it runs.
"""

import keras_rpat  # first: sets the default backend

import keras
import numpy as np
import pytest

from keras_rpat import attacks, optimizers, presets
from keras_rpat.trainer import RPATTrainer
from testing import BACKEND
from testing import float64_precision
from testing import to_np

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="the JAX engine")


def tiny_classifier(seed=0):
    from keras_rpat import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    h = layers.BatchNorm()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, 8, 8, 3)), rng.integers(0, 3, size=(n,)).astype("int64")


def make_trainer(method="pgd_at+rpat", jit_compile=True, seed=0, epochs=2):
    classifier = tiny_classifier(seed)  # seeds Keras first: the attack's seed is drawn when the preset is made
    preset = presets.get(method).with_epochs(epochs)
    preset.attack.num_steps = 3
    trainer = preset.build_trainer(classifier)
    trainer.compile(optimizer=optimizers.SGD(0.05, momentum=0.9, weight_decay=5e-4), jit_compile=jit_compile)
    return trainer


def count_traces(trainer):
    """Counts the traces of the trainer's train step (a Python side effect runs only when JAX traces it)."""
    traces = []
    step = trainer.engine.train_step

    def counted(*args):
        traces.append(trainer.epoch)
        return step(*args)

    trainer.engine.train_step = counted
    return traces


def test_the_step_compiles_once_per_phase():
    # rebat: epoch 0 trains PGD-AT; from epoch 1 the EMA teacher and the BoAT loss join (a new phase).
    trainer = make_trainer("rebat", epochs=2)
    assert trainer.weight_averaging.start_epoch == 1
    traces = count_traces(trainer)
    x, y = batch(24)
    trainer.fit(x.astype("float32"), y, batch_size=8, epochs=2, verbose=0)
    assert traces == [0, 1]  # 6 steps, 2 epochs, 2 phases: two compilations


def test_the_attack_loop_is_one_compiled_loop():
    import jax

    from keras_rpat.backend import jax_state

    model = tiny_classifier()
    x, y = batch()
    values = [v.value for v in model.variables]

    def jaxpr_size(num_steps):
        attack = attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=num_steps, seed=1)
        variables = model.variables + [attack.seed_generator.state]

        def attack_fn(values, x):
            with jax_state.RecordingScope(list(zip(variables, values))):
                return attack.perturb(model, x, y)

        jaxpr = jax.make_jaxpr(attack_fn)(values + [attack.seed_generator.state.value], x.astype("float32"))
        # A fori_loop with static bounds is a `scan` (reverse-differentiable), else a `while`.
        loops = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("scan", "while")]
        return len(jaxpr.jaxpr.eqns), len(loops)

    (size_2, loops_2), (size_10, loops_10) = jaxpr_size(2), jaxpr_size(10)
    assert loops_2 == loops_10 == 1
    assert size_2 == size_10  # the body is traced once, whatever the number of steps


@float64_precision()
def test_jit_compile_off_takes_the_same_steps():
    x, y = batch(16)
    weights = {}
    for jit in (True, False):
        trainer = make_trainer("trades+rpat", jit_compile=jit)
        trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
        weights[jit] = [to_np(w) for w in trainer.classifier.weights]
    for a, b in zip(weights[True], weights[False]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@float64_precision()
def test_random_starts_are_seeded_and_advance():
    x, y = batch(16)
    runs = []
    for _ in range(2):
        trainer = make_trainer("pgd_at", seed=0)
        start = to_np(trainer.attack.seed_generator.state.value)
        trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
        runs.append(([to_np(w) for w in trainer.classifier.weights], start, to_np(trainer.attack.seed_generator.state)))
    (weights_a, start, end), (weights_b, _, end_b) = runs
    assert not np.array_equal(start, end)  # the compiled step returned the attack stream's new state
    np.testing.assert_array_equal(end, end_b)
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)


@float64_precision()
def test_the_eager_attack_equals_the_attack_in_the_compiled_step():
    """An attack called eagerly (Python loop, variables assigned in place) and inside a jitted stateless function
    (one fori_loop) give the same adversarial examples and leave the same BatchNorm statistics (training mode)."""
    import jax

    from keras_rpat.backend import jax_state

    x, y = batch()
    results = []
    for compiled in (False, True):
        model = tiny_classifier()
        attack = attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=4, style="sotas", training=True, seed=3)
        if not compiled:
            x_adv = attack.perturb(model, keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y))
        else:
            variables = model.variables + [attack.seed_generator.state]

            @jax.jit
            def attack_fn(values, x, y):
                with jax_state.RecordingScope(list(zip(variables, values))) as scope:
                    x_adv = attack.perturb(model, x, y)
                return x_adv, [scope.get_current_value(v) for v in variables]

            x_adv, values = attack_fn([v.value for v in variables], x, y)
            for v, value in zip(variables, values):
                v.assign(value)
        results.append((to_np(x_adv), [to_np(v) for v in model.non_trainable_weights]))
    (eager, eager_stats), (jitted, jitted_stats) = results
    np.testing.assert_allclose(eager, jitted, rtol=0, atol=1e-12)
    for a, b in zip(eager_stats, jitted_stats):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_evaluate_and_save_load_round_trip(tmp_path):
    trainer = make_trainer("pgd_at+rpat")
    trainer.eval_attack = None
    x, y = batch(16)
    trainer.fit(x.astype("float32"), y, batch_size=8, epochs=1, verbose=0)
    logs = trainer.evaluate(x.astype("float32"), y, batch_size=8, verbose=0, return_dict=True)
    path = str(tmp_path / "trainer.keras")
    trainer.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, RPATTrainer)
    assert [type(l) for l in loaded.loss_terms] == [type(l) for l in trainer.loss_terms]
    np.testing.assert_array_equal(
        to_np(loaded.predict(x.astype("float32"), verbose=0)), to_np(trainer.predict(x.astype("float32"), verbose=0))
    )
    again = loaded.evaluate(x.astype("float32"), y, batch_size=8, verbose=0, return_dict=True)
    assert again["clean_acc"] == logs["clean_acc"]


def test_a_weight_a_callback_assigns_after_validation_is_the_next_steps_input():
    # Keras' JAX fit holds the variables' values outside the variables mid-epoch and reads them back at an
    # epoch's first step: an assignment made after validation, at the next epoch's start, reaches that step.
    class AssignAtEpoch2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                bias = self.model.classifier.weights[-1]
                bias.assign(np.full(bias.shape, 7.0, "float32"))

    x, y = batch(16)
    classifier = tiny_classifier()
    trainer = RPATTrainer(classifier, losses=[keras_rpat.losses.CrossEntropy()], eval_attack=None)
    trainer.compile(optimizer=optimizers.SGD(0.0))  # the steps leave the weights as they find them
    x = x.astype("float32")
    trainer.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_data=(x, y), callbacks=[AssignAtEpoch2()])
    np.testing.assert_array_equal(to_np(classifier.weights[-1]), np.full((3,), 7.0, "float32"))


def test_cpu_reductions_keep_nan_and_a_compiler_that_drops_it_is_named(monkeypatch):
    import jax

    from keras_rpat.backend import jax as jax_backend

    if jax.default_backend() == "cpu":
        assert jax_backend.cpu_reductions_keep_nan()  # XLA_FLAGS as keras_rpat set it, before JAX compiled
    monkeypatch.setattr(jax_backend, "cpu_reductions_keep_nan", lambda: False)
    monkeypatch.setattr(jax_backend, "_NAN_CHECKED", [])
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    with pytest.warns(UserWarning, match=r"drops NaN.*XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce"):
        jax_backend.train_engine(make_trainer("pgd_at"))
