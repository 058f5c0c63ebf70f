"""Keras variables as values: how keras_rpat's stateful code (attacks, the train step) runs in JAX.

JAX differentiates and compiles pure functions; Keras code reads and assigns
variables. A `keras.StatelessScope` bridges them: inside it, variables read the
values it maps and assignments are recorded in it, not applied. This module
nests such scopes so that a function transformed by JAX (`jax.value_and_grad`,
`jax.lax.fori_loop`, `jax.jit`) sees the current variable values as inputs and
returns its assignments as outputs, which are then made in the enclosing scope
(or, outside any scope, to the variables themselves).
"""

import jax
import keras


class RecordingScope(keras.StatelessScope):
    """A `keras.StatelessScope` over a copy of the enclosing scope's values that remembers
    which variables were assigned in it (`assigned`: id -> variable)."""

    def __init__(self, state_mapping=()):
        super().__init__(state_mapping=state_mapping)
        outer = current_scope()
        if outer is not None:
            self.state_mapping = {**outer.state_mapping, **self.state_mapping}
        self.assigned = {}

    def add_update(self, update):
        variable, _ = update
        self.assigned[id(variable)] = variable
        super().add_update(update)

    def updates(self):
        """`[(variable, new value)]` of the variables assigned in this scope."""
        return [(v, self.state_mapping[key]) for key, v in self.assigned.items()]


def current_scope():
    """The open `keras.StatelessScope`, or `None` (eager: variables hold their values)."""
    # Keras exports no getter; a scope entered and left at once reads the open one as its `original_scope`.
    probe = keras.StatelessScope()
    with probe:
        pass
    return probe.original_scope


def assign(updates):
    """Makes `updates` (`[(variable, value)]`) in the enclosing scope, or to the variables outside one."""
    for variable, value in updates:
        variable.assign(value)


def value_and_grad(fn, x, variables=None):
    """`(value, aux, gradient)` of `value, aux = fn(x)` (a scalar `value`) with respect to `x`; with
    `variables`, `x` are their values and `fn()` reads them. `fn` may read and assign Keras variables
    (a training-mode forward moves the BatchNorm statistics): its assignments are made once, after."""

    def pure(x):
        with RecordingScope(() if variables is None else list(zip(variables, x))) as scope:
            value, aux = fn(x) if variables is None else fn()
        return value, (aux, scope.updates())

    (value, (aux, updates)), grad = jax.value_and_grad(pure, has_aux=True)(x)
    assign(updates)
    return value, aux, grad


def fori_loop(num_steps, body, carry):
    """`carry = body(carry)` `num_steps` times (a Python int): inside a traced (jitted) stateless
    function, one `jax.lax.fori_loop` with the variables of the enclosing scope (and those `body`
    assigns) carried through the loop; eagerly, a Python loop."""
    outer = current_scope()
    traced = outer is not None and any(isinstance(v, jax.core.Tracer) for v in outer.state_mapping.values())
    if not traced or num_steps <= 1:
        # Eager (outside a scope, or `jit_compile=False`): a fori_loop would be traced and compiled anew at
        # every call; step by step, each assignment goes to the scope (or the variables) as it is made.
        for _ in range(num_steps):
            carry = body(carry)
        return carry
    keys = list(outer.state_mapping)
    assigned = {}

    def step(_, state):
        carry, values = state
        with RecordingScope() as scope:
            scope.state_mapping.update(zip(keys, values))
            carry = body(carry)
        unknown = [v.path for key, v in scope.assigned.items() if key not in outer.state_mapping]
        if unknown:
            raise ValueError(
                f"A loop body assigned variables that the enclosing stateless step does not carry: {unknown}. "
                "Make them part of the step's state (e.g. track them on the trainer)."
            )
        assigned.update(scope.assigned)
        return carry, [scope.state_mapping[k] for k in keys]

    carry, values = jax.lax.fori_loop(0, num_steps, step, (carry, [outer.state_mapping[k] for k in keys]))
    final = dict(zip(keys, values))
    assign([(v, final[key]) for key, v in assigned.items()])
    return carry
