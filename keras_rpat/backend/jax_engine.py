"""`JaxEngine`: how JAX runs `RPATTrainer.step` (see `keras_rpat.backend.engine`).

Keras' JAX trainer calls `train_step(state, data)` and `test_step(state, data)`
with the values of the trainer's variables (trainable, non-trainable, optimizer,
metrics) and takes the new values back, in one `jax.jit`-compiled function per
phase (`RPATTrainer.set_epoch` rebuilds it when the attack, the losses or the
EMA decay change). The engine runs the step written once (`RPATTrainer.step`)
inside a `keras.StatelessScope` over those values: the attack's loop is a
`jax.lax.fori_loop`, the weight gradients come from `jax.value_and_grad` over
the trainable values, and every assignment (BatchNorm statistics in the views'
order, the optimizer, the EMA teacher, the random streams, the metrics) becomes
part of the returned state.
"""

from keras_rpat.backend import engine
from keras_rpat.backend import jax_state


class JaxEngine(engine.Engine):
    """The JAX engine of one trainer."""

    def _groups(self, names):
        trainer = self.trainer
        groups = {
            "trainable": lambda: trainer.trainable_variables,
            "non_trainable": lambda: trainer.non_trainable_variables,
            "optimizer": lambda: trainer.optimizer.variables,
            "metrics": lambda: trainer.metrics_variables,
        }
        return [list(groups[name]()) for name in names]

    def _stateless(self, step, names, state, data):
        """`step(x, y, sample_weight)` over the variable values `state` (groups `names`): `(logs, new state)`."""
        groups = self._groups(names)
        mapping = [(v, value) for group, values in zip(groups, state) for v, value in zip(group, values)]
        with jax_state.RecordingScope(mapping) as scope:
            logs = step(*self.trainer.unpack(data))
            new_state = tuple([scope.get_current_value(v) for v in group] for group in groups)
        return logs, new_state

    def train_step(self, state, data):
        return self._stateless(self.run, ("trainable", "non_trainable", "optimizer", "metrics"), state, data)

    def test_step(self, state, data):
        return self._stateless(self.trainer.evaluation_step, ("trainable", "non_trainable", "metrics"), state, data)

    def gradients(self, loss_fn, variables):
        _, aux, gradients = jax_state.value_and_grad(loss_fn, [v.value for v in variables], variables)
        return gradients, aux
