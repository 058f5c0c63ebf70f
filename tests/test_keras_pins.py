"""The private Keras the package still uses, where Keras offers no public way: each use pinned to what it relies on.

A new Keras release fails `test_keras_is_a_version_the_private_uses_were_checked_on`: re-check every use it lists
(and its pin test here or in test_trainer.py), then add the version. tests/test_import_purity.py fails on any
private Keras use not listed there.
"""

import json
import os

import keras_rpat  # noqa: F401  (sets the default backend)

import keras
import numpy as np
import pytest

BACKEND = keras.config.backend()

CHECKED_ON = ("3.15.1",)

# Each private Keras use of the package, with where it is and what it relies on.
PRIVATE_USES = (
    "fast_path/lowering.py: `Variable._value =` re-stores a torch variable (new strides, same values)",
    "fast_path/lowering.py: `Functional._nodes_by_depth` (the graph's nodes) and `Sequential._functional`",
    "trainer.py: overrides `Model._maybe_symbolic_build` (see test_trainer.py)",
    "trainer.py: the `_use_cached_eval_dataset` keyword `fit` passes to `evaluate` for its validation data",
    "callbacks.py: RunBackup extends `BackupAndRestore._load_model` and sets `_current_epoch`, `_weights_path`, "
    "reads `_training_metadata_path`; its `_save_model` replaces Keras' (called only by the hooks RunBackup overrides)",
    "optimizers.py: SGD overrides `Optimizer._backend_update_step` and `_apply_weight_decay`, calls "
    "`_get_variable_index` and `_use_weight_decay`",
)


def test_keras_is_a_version_the_private_uses_were_checked_on():
    assert keras.__version__ in CHECKED_ON, (
        f"Keras {keras.__version__} is not one of the versions keras_rpat's private Keras uses were checked on "
        f"{CHECKED_ON}. Re-check each of them against its source, run tests/test_keras_pins.py, then add the version "
        "to CHECKED_ON:\n" + "\n".join("- " + use for use in PRIVATE_USES)
    )


def small_functional():
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
    a = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Add(name="add")([a, h])
    h = keras.layers.Flatten(name="flatten")(h)
    return keras.Model(inputs, keras.layers.Dense(2, name="dense")(h))


def test_nodes_by_depth_lists_every_call_of_a_functional_model_with_what_the_lowering_reads():
    model = small_functional()
    nodes = model._nodes_by_depth
    assert all(type(depth) is int for depth in nodes) and all(isinstance(v, list) for v in nodes.values())
    calls = [node for depth in sorted(nodes, reverse=True) for node in nodes[depth]]
    inputs = [node for node in calls if node.is_input]
    layers = [node for node in calls if not node.is_input]
    assert len(inputs) == 1 and inputs[0].outputs == model.inputs
    # Every layer called once, inputs before the calls that read them (the deepest depth first).
    assert [node.operation.name for node in layers] == ["conv", "relu", "add", "flatten", "dense"]
    made = {id(t) for t in model.inputs}
    for node in layers:
        assert all(id(t) in made for t in node.input_tensors)
        made.update(id(t) for t in node.outputs)
    by_name = {node.operation.name: node for node in layers}
    assert [id(t) for t in by_name["add"].input_tensors] == [
        id(by_name["relu"].outputs[0]),
        id(by_name["conv"].outputs[0]),
    ]
    assert by_name["dense"].outputs == model.outputs


def test_a_built_sequential_model_is_a_functional_model_of_its_layers():
    model = keras.Sequential([keras.layers.Dense(3, name="a"), keras.layers.ReLU(name="b")])
    assert model._functional is None
    model.build((None, 4))
    inner = model._functional
    assert isinstance(inner, keras.Model) and hasattr(inner, "_nodes_by_depth")
    assert inner.inputs == model.inputs and inner.outputs == model.outputs
    assert [layer.name for layer in inner.layers[1:]] == ["a", "b"]  # the same layer objects, after the input
    assert all(x is y for x, y in zip(inner.layers[1:], model.layers))


@pytest.mark.skipif(BACKEND != "torch", reason="the fast path is torch only")
def test_assigning_a_torch_variables_value_re_stores_it():
    import torch

    variable = keras.Variable(np.arange(6.0).reshape(2, 3), dtype="float64")
    assert isinstance(variable._value, torch.nn.Parameter) and variable.value is variable._value
    data = torch.empty_strided((2, 3), (1, 2), dtype=torch.float64)
    data.copy_(variable.value)
    variable._value = torch.nn.Parameter(data, requires_grad=variable.trainable)
    assert variable.value is variable._value and variable.value.stride() == (1, 2)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), np.arange(6.0).reshape(2, 3))
    variable.assign(np.ones((2, 3)))  # `assign` writes into the new storage
    assert variable.value.data_ptr() == data.data_ptr() and keras.ops.convert_to_numpy(variable).sum() == 6.0


def test_fit_evaluates_its_validation_data_with_the_use_cached_eval_dataset_keyword():
    seen = []

    class Model(keras.Model):
        def evaluate(self, *args, **kwargs):
            seen.append(kwargs.get("_use_cached_eval_dataset"))
            return super().evaluate(*args, **kwargs)

    inputs = keras.Input((3,))
    model = Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile("sgd", "mse")
    x, y = np.zeros((4, 3), "float32"), np.zeros((4, 2), "float32")
    model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert seen == [True, None]


def test_backup_and_restore_loads_its_backup_in_load_model_and_fit_starts_at_the_epoch_it_names(tmp_path):
    loaded, epochs, weights = [], [], []

    class Backup(keras.callbacks.BackupAndRestore):
        def _load_model(self):
            loaded.append(self._current_epoch)
            super()._load_model()

    class Epochs(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            weights.extend(self.model.get_weights())

        def on_epoch_begin(self, epoch, logs=None):
            epochs.append(epoch)

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile("sgd", "mse")
    backup = Backup(str(tmp_path / "backup"), delete_checkpoint=False)
    assert backup._current_epoch == 0
    assert os.path.basename(backup._training_metadata_path) == "training_metadata.json"
    os.makedirs(backup.backup_dir)
    saved = [np.full(w.shape, 0.5, "float32") for w in model.get_weights()]
    model.set_weights(saved)
    backup._weights_path = str(tmp_path / "backup" / "mine.weights.h5")  # the file `_load_model` loads
    model.save_weights(backup._weights_path)
    with open(backup._training_metadata_path, "w") as f:
        json.dump({"epoch": 2}, f)
    model.set_weights([np.zeros_like(w) for w in saved])
    x, y = np.zeros((4, 3), "float32"), np.zeros((4, 2), "float32")
    model.fit(x, y, epochs=3, verbose=0, callbacks=[backup, Epochs()])
    assert loaded == [0] and epochs == [2]
    for got, want in zip(weights, saved, strict=True):
        np.testing.assert_array_equal(got, want)
    # Keras' `on_epoch_end` sets `_current_epoch` (the count of finished epochs) that RunBackup's backup records.
    assert backup._current_epoch == 3


def test_backup_and_restore_saves_only_from_the_hooks_run_backup_overrides():
    import inspect

    from keras_rpat.callbacks import RunBackup

    callers = {
        name
        for name, method in vars(keras.callbacks.BackupAndRestore).items()
        if callable(method) and "self._save_model(" in inspect.getsource(method)
    }
    assert callers == {"on_epoch_end", "on_train_batch_end"}
    assert all(name in vars(RunBackup) for name in callers)


def test_the_optimizer_methods_sgd_overrides_and_calls_are_the_ones_it_was_written_for():
    calls = []

    class Recording(keras.optimizers.Optimizer):
        def update_step(self, gradient, variable, learning_rate):
            variable.assign_sub(gradient * learning_rate)

        def _apply_weight_decay(self, variables):
            calls.append(("_apply_weight_decay", [v.path for v in variables]))
            super()._apply_weight_decay(variables)

        def _backend_update_step(self, grads, trainable_variables, learning_rate):
            calls.append(("_backend_update_step", [v.path for v in trainable_variables]))
            super()._backend_update_step(grads, trainable_variables, learning_rate)

    a, b = keras.Variable(np.ones(2), name="a"), keras.Variable(np.ones(3), name="b")
    optimizer = Recording(learning_rate=0.5)
    optimizer.exclude_from_weight_decay(var_names=["b"])
    optimizer.apply([np.ones(2), np.ones(3)], [a, b])
    assert calls == [("_apply_weight_decay", [a.path, b.path]), ("_backend_update_step", [a.path, b.path])]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(a), [0.5, 0.5])
    # The index of a variable in the order the optimizer was built with, and whether weight decay applies to it.
    assert [optimizer._get_variable_index(v) for v in (b, a)] == [1, 0]
    assert [optimizer._use_weight_decay(v) for v in (a, b)] == [True, False]
