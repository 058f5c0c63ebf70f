"""`RPATTrainer`: adversarial training with `model.fit`.

The trainer wraps a classifier, runs the attack, computes exactly the views its
losses declare, each with its own training-mode forward pass in the reference
order, and applies the update. The train step (`RPATTrainer.step`) is written
once, in `keras.ops`; each backend's engine (`keras_rpat.backend.engine`)
supplies how gradients are taken and reduced. Nothing in the step synchronises with the host or
branches on a tensor value: every choice that depends on the epoch (attack
schedule, loss start epochs, weight-averaging and AWP warm-ups) is made between epochs,
and the train function is rebuilt when it changes.
"""

import types

import keras
import numpy as np
from keras import ops

from keras_rpat import _checks
from keras_rpat import _data_checks
from keras_rpat import attacks as attacks_lib
from keras_rpat import awp as awp_lib
from keras_rpat import backend as rpat_backend
from keras_rpat import config as rpat_config
from keras_rpat import divergence
from keras_rpat import fast_path as fast_path_lib
from keras_rpat import losses as losses_lib
from keras_rpat import weight_averaging as weight_averaging_lib
from keras_rpat.awp import AWP  # noqa: F401  (re-exported: keras_rpat.trainer.AWP)
from keras_rpat.weight_averaging import WeightAveraging  # noqa: F401  (re-exported: keras_rpat.trainer.WeightAveraging)

_INPUT_OF_VIEW = {
    "clean": "x",
    "clean_kl": "x",
    "adv": "adv",
    "interp": "interp",
    "teacher_clean": "x",
    "teacher_adv": "adv",
    "teacher_interp": "teacher_interp",
}


PRECISIONS = ("float32", "bfloat16")
MEMORY_FORMATS = ("contiguous", "channels_last")
_PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}


class _EpochCallback(keras.callbacks.Callback):
    """Tells the trainer which epoch starts (for its epoch-dependent phases)."""

    def __init__(self, trainer):
        super().__init__()
        self._trainer = trainer

    def on_train_begin(self, logs=None):
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if getattr(self, "_first_epoch", False):
            # A resumed data-parallel job: every rank must restart at the same epoch.
            self._first_epoch = False
            rpat_backend.check_same_on_all_ranks(
                epoch,
                "epoch to resume from",
                "Their backups differ (a rank was stopped while writing one): copy rank 0's run folder over "
                "the other ranks' folders, or re-run from scratch with --overwrite.",
            )
        self._trainer.set_epoch(epoch)


def _check_global_batch(x, batch_size, devices):
    """Refuses a global batch of `fit(x, batch_size=...)` (arrays: `batch_size`, Keras' default 32; a
    PyDataset: its first batch) that does not split over `devices`."""
    size = min(len(x), batch_size or 32) if isinstance(x, np.ndarray) else None
    if isinstance(x, keras.utils.PyDataset) and len(x):
        first, _, _ = keras.utils.unpack_x_y_sample_weight(x[0])
        size = len(first) if isinstance(first, np.ndarray) else None
    if size is not None and size % devices:
        raise ValueError(
            f"The global batch of {size} images does not split over {devices} devices. Pick a "
            f"batch size that is a multiple of {devices} (e.g. {max(devices, size - size % devices)}), or a "
            "device count that divides it."
        )


def _correct(y, logits):
    pred = ops.argmax(logits, axis=-1)
    if _data_checks.is_soft_labels(y.shape, logits.shape[-1]):
        label = ops.argmax(y, axis=-1)
    else:
        label = ops.reshape(y, (-1,))
    return ops.cast(ops.equal(ops.cast(pred, "int32"), ops.cast(label, "int32")), "float32")


@keras.saving.register_keras_serializable(package="keras_rpat")
class RPATTrainer(keras.Model):
    """Adversarial training of a classifier with any combination of AT losses.

    Args:
        classifier: a Keras model mapping images in [0, 1] to logits.
        attack: a `keras_rpat.attacks.Attack` producing `x'`, or `None` for
            clean training.
        losses: a list of `keras_rpat.losses.ViewLoss`; the total loss is their
            weighted sum. RPAT is `RobustPerception()` added to any list.
        loss_weights: optional list (or dict by loss name) of multipliers.
        weight_averaging: a `WeightAveraging` (or `True` for the defaults) to
            keep an EMA teacher; needed by `BoAT` and `RPATPlusPlus`.
        awp: a `keras_rpat.AWP` (or `True` for the defaults): adversarial
            weight perturbation on the step's own total loss
            (docs/algorithms.md#adversarial-weight-perturbation).
        post_step_clean_forward: after each update, run one training-mode clean
            forward whose output is unused (it moves the BatchNorm statistics;
            the ReBAT pipeline does this, docs/algorithms.md#post-step-clean-forward).
        track_clean_accuracy: report training clean accuracy; when no loss
            needs the clean view it costs one inference-mode forward.
        eval_attack: optional attack used by `evaluate()` (and
            `validation_data`) to report `adv_acc` next to `clean_acc`.
        seed: seed of the trainer's own randomness (Beta-sampled `alpha`);
            `None` draws one from the global seed when the trainer is made.
        fast_path: on the torch backend, run the step on the classifier
            lowered into torch kernels over the same variables (exact: the
            same arithmetic, fewer kernels; see docs/guides/performance.md). A
            classifier it cannot lower runs on the Keras path, with one log
            line naming the reason. Ignored on tensorflow and jax. `None` (default)
            means `True` unless `keras_rpat.config.set_fast_path_default(False)` was called
            (the CLI's `keras-rpat --no-fast-path`).
        capture: with the fast path on CUDA, capture the whole step in one
            CUDA graph per batch shape and replay it. Off by default; on a
            CPU the step runs uncaptured.
        precision: `"float32"` (default) or `"bfloat16"` (`"bf16"`): bf16
            autocast of the fast path's forward passes (not exact).
        memory_format: `"contiguous"` (NCHW, default) or `"channels_last"`
            (NHWC storage) for the fast path's activations; both exact.
        sync_batchnorm: in a data-parallel job (`torchrun`), compute the
            training-mode BatchNorm statistics over the global batch, so N
            devices x B/N take the same step as one device x B. Off by
            default: each device normalises with its own B/N images (as
            DistributedDataParallel does) and the moving statistics are
            averaged over the devices after every step. Needs a job.
            `None` (default) means `False` unless `keras_rpat.config.set_sync_batchnorm_default`
            said otherwise.

    Example:

    ```python
    classifier = keras_rpat.models.get("resnet18_bottleneck", num_classes=10)
    trainer = keras_rpat.RPATTrainer(
        classifier,
        attack=keras_rpat.attacks.PGD("linf", 8/255, 2/255, num_steps=10),
        losses=[keras_rpat.losses.AdversarialCrossEntropy(),
                keras_rpat.losses.RobustPerception(alpha=0.5)],
    )
    trainer.compile(optimizer=keras_rpat.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4))
    trainer.fit(train_data, epochs=110)
    ```

    References:
        - Wang & Liu, Failure Cases Are Better Learned But Boundary Says Sorry,
          ICCV 2025.
    """

    def __init__(
        self,
        classifier,
        attack=None,
        losses=None,
        loss_weights=None,
        weight_averaging=None,
        awp=None,
        post_step_clean_forward=False,
        track_clean_accuracy=True,
        eval_attack=None,
        seed=None,
        fast_path=None,
        capture=False,
        precision="float32",
        memory_format="contiguous",
        sync_batchnorm=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(classifier, keras.Model):
            raise ValueError(
                "`classifier` must be a keras.Model mapping images to logits "
                f"(e.g. keras_rpat.models.get('resnet18')). Received: {type(classifier).__name__}"
            )
        self.classifier = classifier
        self.attack = attacks_lib.get(attack)
        self.eval_attack = attacks_lib.get(eval_attack)
        if losses is None:
            losses = [losses_lib.AdversarialCrossEntropy() if self.attack is not None else losses_lib.CrossEntropy()]
        if isinstance(losses, losses_lib.ViewLoss):
            losses = [losses]
        self.loss_terms = [losses_lib.get(l) for l in losses]
        if not self.loss_terms:
            raise ValueError("`losses` must contain at least one keras_rpat.losses.ViewLoss.")
        names = [l.name for l in self.loss_terms]
        if len(set(names)) != len(names):
            raise ValueError(
                f"Loss names must be unique (they name the logged terms). Received: {names}. "
                "Pass `name=` to tell them apart."
            )
        self.loss_weights = self._resolve_weights(loss_weights, names)
        self.weight_averaging = weight_averaging_lib.get(weight_averaging)
        self.awp = awp_lib.get(awp)
        self.post_step_clean_forward = bool(post_step_clean_forward)
        self.track_clean_accuracy = bool(track_clean_accuracy)
        self.seed = seed
        self.fast_path = (
            rpat_config.fast_path_default() if fast_path is None else _checks.check_bool(fast_path, "fast_path")
        )
        self.capture = _checks.check_bool(capture, "capture")
        self.precision = _checks.check_choice(_PRECISIONS.get(precision, precision), "precision", PRECISIONS)
        self.memory_format = _checks.check_choice(memory_format, "memory_format", MEMORY_FORMATS)
        if sync_batchnorm is None:
            sync_batchnorm = rpat_config.sync_batchnorm_default()
        self.sync_batchnorm = _checks.check_bool(sync_batchnorm, "sync_batchnorm")

        self._check_views()
        self._num_classes = (
            int(classifier.outputs[0].shape[-1]) if hasattr(classifier, "outputs") and classifier.outputs else None
        )
        self._aux = types.SimpleNamespace(feature_models={}, engine=None)  # a container Keras does not track
        self.teacher = None
        if self.weight_averaging is not None:
            self.teacher = keras.models.clone_model(classifier)
            self.teacher.set_weights(classifier.get_weights())
            # Its variables are not trained, but its layers stay trainable: a non-trainable
            # BatchNorm runs in inference mode even when called with training=True.
            for variable in self.teacher.weights:
                variable.trainable = False
            if [tuple(v.shape) for v in self.teacher.weights] != [tuple(v.shape) for v in classifier.weights]:
                raise ValueError("Could not clone the classifier for weight averaging: variable shapes differ.")
        self._seed_generator = keras.random.SeedGenerator(seed)
        # The attacks' random streams are state of the trainer's steps (JAX's compiled step carries them).
        streams = [a.seed_generator for a in (self.attack, self.eval_attack) if a is not None]
        self._attack_seed_generators = list({id(g): g for g in streams}.values())
        for attack in (self.attack, self.eval_attack):
            if attack is not None:
                attack.build_state()

        self._total_tracker = keras.metrics.Mean(name="loss")
        self._term_trackers = [keras.metrics.Mean(name=n) for n in names]
        self._clean_acc = keras.metrics.Mean(name="clean_acc")
        self._adv_acc = keras.metrics.Mean(name="adv_acc")
        self._epoch = 0
        self._phase = None
        self._apply_phase(0)
        self.built = True

    # ------------------------------------------------------------------ setup
    def _resolve_weights(self, loss_weights, names):
        if loss_weights is None:
            return [1.0] * len(names)
        if isinstance(loss_weights, dict):
            unknown = set(loss_weights) - set(names)
            if unknown:
                raise ValueError(f"`loss_weights` names unknown losses {sorted(unknown)}; the losses are {names}.")
            return [_checks.check_range(loss_weights.get(n, 1.0), "loss_weights", low=0) for n in names]
        loss_weights = [_checks.check_range(w, "loss_weights", low=0) for w in loss_weights]
        if len(loss_weights) != len(names):
            raise ValueError(
                f"`loss_weights` must have one entry per loss ({len(names)}). Received {len(loss_weights)}."
            )
        return loss_weights

    def _check_views(self):
        for loss in self.loss_terms:
            for view in loss.required_views:
                if view not in losses_lib.ALL_VIEWS:
                    raise ValueError(
                        f"Loss {loss.name!r} needs the view {view!r}, which RPATTrainer cannot "
                        f"produce. Available views: {losses_lib.ALL_VIEWS}."
                    )
                if self.attack is None and view not in ("clean", "clean_kl", "teacher_clean"):
                    raise ValueError(
                        f"Loss {loss.name!r} needs the view {view!r}, which needs an attack, "
                        "but attack=None. Pass an attack (e.g. keras_rpat.attacks.PGD()) or use "
                        "keras_rpat.losses.CrossEntropy() for clean training."
                    )
                if view.startswith("teacher_") and self.weight_averaging is None:
                    raise ValueError(
                        f"Loss {loss.name!r} needs the weight-averaged teacher (view {view!r}), "
                        "but weight_averaging=None. Pass weight_averaging=keras_rpat.WeightAveraging()."
                    )
                if view in ("interp", "teacher_interp") and not hasattr(loss, "interpolation_alpha"):
                    raise ValueError(f"Loss {loss.name!r} needs {view!r} but defines no interpolation_alpha().")
            if loss.proxy != "logits":
                self._check_proxy(loss.proxy)

    def _check_proxy(self, proxy):
        try:
            self.classifier.get_layer(proxy).output  # noqa: B018
            self.classifier.inputs[0]  # noqa: B018
        except (ValueError, AttributeError, TypeError, IndexError):
            raise ValueError(
                f"The perception proxy {proxy!r} needs a functional classifier with a layer named "
                f"{proxy!r} (every keras_rpat.models model has one)."
            ) from None

    def feature_model(self, proxies):
        """The classifier returning `[logits, *features]` of the layers named `proxies` (cached)."""
        if not proxies:
            return self.classifier
        key = tuple(proxies)
        if key not in self._aux.feature_models:
            outputs = [self.classifier.outputs[0]] + [self.classifier.get_layer(p).output for p in key]
            self._aux.feature_models[key] = keras.Model(self.classifier.inputs, outputs)
        return self._aux.feature_models[key]

    # ------------------------------------------------------------------ models
    def fast_runtime(self):
        """The torch fast path of this trainer (its lowered models and train step: a
        `keras_rpat.fast_path.runtime.FastRuntime`, which is then its `engine`); `None`
        where the Keras models run (tensorflow, `fast_path=False`, a model it cannot lower)."""
        engine = self.engine
        return engine if engine.lowered else None

    def _classifier_forward(self, proxies=()):
        """The callable computing logits (and `proxies` features) this step:
        the lowered classifier on the torch fast path, else the Keras model."""
        fast = self.fast_runtime()
        if fast is None:
            return self.feature_model(proxies)
        return fast.features(proxies)

    def _teacher_forward(self):
        fast = self.fast_runtime()
        return self.teacher if fast is None else fast.teacher

    def _evaluation_forward(self):
        if self.evaluation_model is self.classifier:
            return self._classifier_forward()
        return self._teacher_forward()

    # ------------------------------------------------------------------ phases
    def set_epoch(self, epoch):
        """Selects the attack, active losses and EMA decay of a 0-based epoch.

        Called by `fit` at the start of every epoch. If anything changes, the
        train function is rebuilt (it is traced with static choices).
        """
        self._epoch = int(epoch)
        changed = self._apply_phase(self._epoch)
        if changed and self.train_function is not None:
            self.make_train_function(force=True)

    def _apply_phase(self, epoch):
        attack = self.attack.at_epoch(epoch) if self.attack is not None else None
        active = tuple(i for i, l in enumerate(self.loss_terms) if epoch >= l.start_epoch)
        wa = self.weight_averaging
        decay = wa.decay_at(epoch) if wa else None
        teacher_training = wa.teacher_training_at(epoch) if wa else None
        awp_active = self.awp is not None and self.awp.active_at(epoch)
        phase = (repr(attack), active, decay, teacher_training, awp_active)
        if phase == self._phase:
            return False
        self._phase = phase
        self._awp_active = awp_active
        self._active_attack = attack
        self._active = active
        self._wa_decay = decay
        self._teacher_training = teacher_training
        order, proxies = [], {}
        for i in active:
            loss = self.loss_terms[i]
            for view in loss.required_views:
                if view not in order:
                    order.append(view)
                if loss.proxy != "logits":
                    proxies.setdefault(view, [])
                    if loss.proxy not in proxies[view]:
                        proxies[view].append(loss.proxy)
        self._view_order = order
        self._view_proxies = proxies
        self._interp_alpha_source = {}
        for view in ("interp", "teacher_interp"):
            for i in active:
                if view in self.loss_terms[i].required_views:
                    self._interp_alpha_source[view] = self.loss_terms[i]
                    break
        return True

    @property
    def epoch(self):
        return self._epoch

    @property
    def seed_generator(self):
        """The trainer's `keras.random.SeedGenerator` (the RPAT interpolation weights); read-only."""
        return self._seed_generator

    @property
    def phase(self):
        """What the step depends on besides its inputs (attack, losses, EMA decay, AWP); changes between epochs."""
        return self._phase

    # ------------------------------------------------------------------ step
    def unpack(self, data):
        """A batch's `(x, y, sample_weight)` as tensors: float32 images (float64 under a float64 policy)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # float32 pixels, or float64 under a float64 dtype policy.
        x = ops.convert_to_tensor(x, dtype="float64" if self.classifier.dtype == "float64" else "float32")
        y = ops.convert_to_tensor(y)
        if sample_weight is not None:
            sample_weight = ops.convert_to_tensor(sample_weight)
        return x, y, sample_weight

    def _input(self, view, x, x_adv, alphas):
        kind = _INPUT_OF_VIEW[view]
        if kind == "x":
            return x
        if kind == "adv":
            return x_adv
        alpha = alphas[view if kind == "interp" else "teacher_interp"]
        return x + alpha * (x_adv - x)

    def attack_views(self, x, y):
        """The attack and the no-gradient forwards: `(x_adv, static_views)` (teacher logits, alphas, clean eval)."""
        x_adv = None
        if self._active_attack is not None:
            x_adv = ops.stop_gradient(self._active_attack.perturb(self._classifier_forward(), x, y))
        static, alphas = {}, {}
        for view, loss in self._interp_alpha_source.items():
            alphas[view] = loss.interpolation_alpha(self._seed_generator)
            static[f"{view}_alpha"] = alphas[view]
        static["_alphas"] = alphas
        teacher_views = [v for v in self._view_order if v.startswith("teacher_")]
        if teacher_views:
            teacher = self._teacher_forward()
            with rpat_backend.no_grad():
                for view in teacher_views:
                    logits = teacher(self._input(view, x, x_adv, alphas), training=self._teacher_training)
                    static[view] = ops.stop_gradient(logits)
        if self.track_clean_accuracy and "clean" not in self._view_order:
            with rpat_backend.no_grad():
                static["_clean_eval"] = ops.stop_gradient(self._classifier_forward()(x, training=False))
        return x_adv, static

    def view_losses(self, x, y, x_adv, static, sample_weight=None, share=None):
        """The training-mode forwards (in view order) and the losses: `(total, terms by index, views by name)`.

        `share(loss, value)`, if given, maps each loss value to this device's
        share of the one-device value (tf.distribute; see tensorflow_distributed).
        """
        alphas = static.pop("_alphas")
        views = dict(static)
        order = [view for view in self._view_order if not view.startswith("teacher_")]
        inputs = [self._input(view, x, x_adv, alphas) for view in order]
        for view, outputs in zip(order, self._view_forwards(order, inputs)):
            proxies = self._view_proxies.get(view, ())
            if proxies:
                views[view] = outputs[0]
                for proxy, feature in zip(proxies, outputs[1:]):
                    views[f"{view}:{proxy}"] = feature
            else:
                views[view] = outputs
        terms = {}
        total = None
        for i in self._active:
            loss = self.loss_terms[i]
            value = loss(y, views, sample_weight=sample_weight)
            if share is not None:
                value = share(loss, value)
            terms[i] = value
            weighted = value * self.loss_weights[i] if self.loss_weights[i] != 1.0 else value
            total = weighted if total is None else total + weighted
        return total, terms, views

    def _view_forwards(self, order, inputs):
        """The training-mode forward of each view, in view order.

        A forward with `forward_many` (the torch fast path's lowered model)
        takes all views in one pass over their concatenated batch, with
        per-view BatchNorm statistics; else one forward per view.
        """
        union = tuple(dict.fromkeys(p for view in order for p in self._view_proxies.get(view, ())))
        forward_many = getattr(self._classifier_forward(union), "forward_many", None)
        if forward_many is None or len(order) < 2:
            return [
                self._classifier_forward(self._view_proxies.get(view, ()))(i, training=True)
                for view, i in zip(order, inputs)
            ]
        outputs = forward_many(inputs, training=True)
        if not union:
            return outputs
        picked = []
        for view, out in zip(order, outputs):
            proxies = self._view_proxies.get(view, ())
            picked.append([out[0]] + [out[1 + union.index(p)] for p in proxies] if proxies else out[0])
        return picked

    def awp_gradients(self, x, y, x_adv, static_views, batch):
        """AWP's ascent direction: the global batch's gradients of the step's total loss on its views (a forward
        the step's own forwards repeat; summed over the devices as the weight gradients); the BatchNorm statistics
        it moved are restored, as the reference's proxy copy discards them (docs/algorithms.md#adversarial-weight-perturbation)."""
        state = self.classifier.non_trainable_variables
        saved = [ops.copy(v.value) for v in state]

        def loss_fn():
            total, _, _ = self.view_losses(x, y, x_adv, dict(static_views), batch.sample_weight, batch.loss_share)
            return (total if batch.loss_weight is None else total * batch.loss_weight), None

        gradients, _ = self.engine.gradients(loss_fn, self.trainable_weights)
        with self.engine.update_context():
            for variable, value in zip(state, saved):
                variable.assign(value)
        return batch.reduce_gradients(gradients)

    def after_update(self, x):
        """After the optimizer's update: the optional post-step clean forward, then the EMA of the teacher."""
        if self.post_step_clean_forward:
            with rpat_backend.no_grad():
                self._classifier_forward()(x, training=True)
        if self.teacher is not None:
            decay = self.weight_averaging.step_decay(self._wa_decay, self.optimizer.iterations)
            rpat_backend.assign_moving_average(self.teacher.weights, self.classifier.weights, decay)

    def update_metrics(self, y, total, terms, views):
        """Updates the trackers with one step's loss, terms and accuracies; returns the logs."""
        self._total_tracker.update_state(total)
        for i, value in terms.items():
            self._term_trackers[i].update_state(value)
        if "adv" in views:
            self._adv_acc.update_state(_correct(y, views["adv"]))
        clean = views.get("clean", views.get("_clean_eval"))
        if clean is not None:
            self._clean_acc.update_state(_correct(y, clean))
        return {m.name: m.result() for m in self.metrics}

    @property
    def engine(self):
        """The `keras_rpat.backend.engine.Engine` running this trainer's steps (made on first use):
        the torch fast path's runtime where it applies, else the backend's engine."""
        if self._aux.engine is None:
            self._aux.engine = fast_path_lib.trainer_engine(self) or rpat_backend.train_engine(self)
        return self._aux.engine

    def train_step(self, *args):
        """What `fit` runs on a batch (`data`): `step` on its tensors, run by `self.engine`. On JAX,
        Keras passes the variables' values first and takes them back: `(state, data) -> (logs, state)`."""
        return self.engine.train_step(*args)

    def step(self, x, y, sample_weight=None):
        """The train step, written once for every engine (`keras_rpat.backend.engine`); returns the logs:
        `attack_views`, `view_losses` (the engine takes their gradients and, in a data-parallel job, sums
        them and `metric_sums` over the devices), the optimizer's update, `after_update`, `update_metrics`."""
        engine = self.engine
        variables = self.trainable_weights
        with engine.shard(x, y, sample_weight) as batch:
            x, y, sample_weight = batch.x, batch.y, batch.sample_weight
            with engine.forward_context(x):
                x_adv, static_views = self.attack_views(x, y)
                awp_gradients = self.awp_gradients(x, y, x_adv, static_views, batch) if self._awp_active else None
            perturbation = (
                None if awp_gradients is None else self.awp.perturb(variables, awp_gradients, engine.update_context())
            )
            with engine.forward_context(x):

                def loss_fn():
                    total, terms, views = self.view_losses(x, y, x_adv, static_views, sample_weight, batch.loss_share)
                    weighted = total if batch.loss_weight is None else total * batch.loss_weight
                    return self.optimizer.scale_loss(weighted), (total, terms, views)

                gradients, (total, terms, views) = engine.gradients(loss_fn, variables)
            if batch.distributed:
                sums, layout = self.metric_sums(y, total, terms, views, batch.metric_weight)
                gradients, sums = batch.reduce(gradients, variables, sums)
            with engine.update_context():
                self.optimizer.apply(gradients, variables)
                if perturbation is not None:
                    self.awp.restore(variables, perturbation)
                with engine.forward_context(x):
                    self.after_update(x)
        if not batch.distributed:
            return self.update_metrics(y, total, terms, views)
        batch.average(self.non_trainable_weights)
        return batch.logs(self.update_metrics_from_sums(sums, layout))

    # ------------------------------------------------------------- data parallel
    def batch_groups(self):
        """Blocks of a batch that must be sharded together: 2 for two-view
        batches (Consistency pairs row i with row i + B/2), else 1."""
        return 2 if any(isinstance(l, losses_lib.Consistency) for l in self.loss_terms) else 1

    def metric_sums(self, y, total, terms, views, weight):
        """This device's share of the step's metrics, as one vector to sum over devices, and its layout for
        `update_metrics_from_sums`. `weight` is the device's share of the batch (`rows / batch`): the loss
        terms enter weighted, the accuracies as (correct, count) sums."""
        values = [total * weight] + [terms[i] * weight for i in self._active]
        # float32 sums (bf16 losses upcast), float64 for a float64 model's losses.
        dtype = "float64" if keras.backend.standardize_dtype(total.dtype) == "float64" else "float32"
        layout = []
        for name, key in (("adv", "adv"), ("clean", "clean"), ("clean", "_clean_eval")):
            if key in views and name not in layout:
                correct = _correct(y, views[key])
                values += [ops.sum(correct), ops.cast(ops.shape(correct)[0], dtype)]
                layout.append(name)
        return ops.stack([ops.cast(v, dtype) for v in values]), layout

    def update_metrics_from_sums(self, sums, layout):
        """Updates the trackers from `metric_sums` summed over devices; returns the logs."""
        self._total_tracker.update_state(sums[0])
        for k, i in enumerate(self._active):
            self._term_trackers[i].update_state(sums[1 + k])
        offset = 1 + len(self._active)
        for name in layout:
            correct, count = sums[offset], sums[offset + 1]
            tracker = self._adv_acc if name == "adv" else self._clean_acc
            tracker.update_state(correct / count, sample_weight=count)
            offset += 2
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, *args):
        """What `evaluate` runs on a batch: `evaluation_step`, run by `self.engine` (on JAX as `train_step`)."""
        return self.engine.test_step(*args)

    def evaluation_step(self, x, y, sample_weight=None):
        """`evaluate`'s step: the loss and clean accuracy of the evaluation model, and the
        accuracy under `eval_attack`; returns the logs."""
        model = self._evaluation_forward()
        # Under a tf.distribute strategy: this replica's share of the batch, and the
        # attack's random starts are rows of the one-device draw.
        with rpat_backend.replica_share(x) as share:
            logits = model(x, training=False)
            self._total_tracker.update_state(ops.mean(attacks_lib.cross_entropy(y, logits)), sample_weight=share)
            self._clean_acc.update_state(_correct(y, logits))
            logs = {"loss": self._total_tracker.result(), "clean_acc": self._clean_acc.result()}
            if self.eval_attack is not None:
                x_adv = self.eval_attack.perturb(model, ops.convert_to_tensor(x), y)
                self._adv_acc.update_state(_correct(y, model(ops.stop_gradient(x_adv), training=False)))
                logs["adv_acc"] = self._adv_acc.result()
        return logs

    @property
    def evaluation_model(self):
        """The model `evaluate()` reports: the WA teacher if configured, else the classifier."""
        if self.teacher is not None and self.weight_averaging.evaluate_average:
            return self.teacher
        return self.classifier

    def call(self, inputs, training=False):
        return self.classifier(inputs, training=training)

    @property
    def metrics(self):
        return [self._total_tracker, *self._term_trackers, self._clean_acc, self._adv_acc]

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        validate_inputs=True,
        stop_on_divergence=True,
        **kwargs,
    ):
        """`keras.Model.fit`, plus input validation, epoch tracking and a divergence stop.

        Args:
            validate_inputs: check the first batch (or the arrays), and those
                of `validation_data`, for pixels outside [0, 1], integer images,
                images of another size and out-of-range labels before training
                (and warn about one-class labels). Checking happens on the host,
                outside the train step.
            stop_on_divergence: stop at the first non-finite loss with a
                `keras_rpat.callbacks.DivergenceError` naming the epoch, the
                step and the likely cause (a `DivergenceGuard` first among the
                callbacks, unless `callbacks` holds one). Adversarial training
                that diverged (a learning rate or an epsilon too large) only
                wastes the rest of its epochs, so this is on by default, unlike
                Keras' opt-in `TerminateOnNaN`; the guard adds no host
                synchronisation to the train step. `False`: Keras' behaviour.
            Others: as `keras.Model.fit`.
        """
        _checks.check_bool(stop_on_divergence, "stop_on_divergence")
        if getattr(self, "optimizer", None) is None:
            raise ValueError(
                "Call `trainer.compile(optimizer=...)` before `fit`, e.g. "
                "trainer.compile(optimizer=keras_rpat.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4))."
            )
        _checks.check_positive_int(batch_size, "batch_size", allow_none=True)
        _checks.check_positive_int(epochs, "epochs")
        if validate_inputs:
            self.validate_data(x, y)
            _data_checks.check_validation_data(self.classifier, self._num_classes, kwargs.get("validation_data"))
            _data_checks.warn_if_one_class(y, self._num_classes)
        _data_checks.warn_if_softmax(self.classifier)
        job = self.join_distributed()
        if job is not None:
            _check_global_batch(x, batch_size, job.world_size)
        callbacks = list(callbacks or [])
        if stop_on_divergence and not any(isinstance(c, divergence.DivergenceGuard) for c in callbacks):
            callbacks.insert(0, divergence.DivergenceGuard())
        callbacks.append(_EpochCallback(self))
        try:
            return super().fit(
                x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks, **kwargs
            )
        except Exception as e:
            failure = None if job is None else rpat_backend.worker_failure(e)
            if failure is None:
                raise
            raise failure from e

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`, after the checks of `fit`'s inputs (pixels in [0, 1], labels in range)."""
        # A private Keras keyword (no public way tells `fit`'s validation call apart; tests/test_keras_pins.py):
        # `fit`'s validation data, checked by `fit`.
        if not kwargs.get("_use_cached_eval_dataset"):
            self.validate_data(x, y)
            _data_checks.warn_if_softmax(self.evaluation_model)
        return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict` (the classifier's logits), after checking the images."""
        self.validate_data(x)
        return super().predict(x, *args, **kwargs)

    def join_distributed(self):
        """Joins the data-parallel job this process runs in (torchrun, or the tf.distribute strategy the trainer
        was built under); returns its context or `None`. `sync_batchnorm=True` without a job is an error (it
        would silently train per device)."""
        job = rpat_backend.initialize_distributed(self)
        if job is None and self.sync_batchnorm:
            raise ValueError(
                "`sync_batchnorm=True` needs a data-parallel job, but this process runs alone. Launch it with "
                "`torchrun --nproc_per_node=N ...` (torch, one process per device), or build and fit the trainer "
                "in a tf.distribute strategy's scope with several replicas (tensorflow), or build it after "
                "keras.distribution.set_distribution(keras.distribution.DataParallel()) on several devices (jax), "
                "or pass sync_batchnorm=False."
            )
        return job

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # A private Keras method, overridden as no public way exists (tests/test_trainer.py pins it): Keras 3.15
        # builds a model made in a strategy's scope from a batch averaged with `strategy.reduce(axis=None)`, which
        # fails under MultiWorkerMirroredStrategy. The trainer is built when made: only its optimizer may not be.
        if not all(layer.built for layer in self.layers):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def validate_data(self, x, y=None):
        """Checks images and labels (arrays, or the first batch of a PyDataset) as `fit` does."""
        _data_checks.check_training_data(self.classifier, self._num_classes, x, y)

    # ------------------------------------------------------------------ config
    def get_config(self):
        ser = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "classifier": ser(self.classifier),
            "attack": attacks_lib.serialize(self.attack),
            "losses": [ser(l) for l in self.loss_terms],
            "loss_weights": list(self.loss_weights),
            "weight_averaging": None if self.weight_averaging is None else ser(self.weight_averaging),
            "awp": None if self.awp is None else ser(self.awp),
            "post_step_clean_forward": self.post_step_clean_forward,
            "track_clean_accuracy": self.track_clean_accuracy,
            "eval_attack": attacks_lib.serialize(self.eval_attack),
            "seed": self.seed,
            "fast_path": self.fast_path,
            "capture": self.capture,
            "precision": self.precision,
            "memory_format": self.memory_format,
            "sync_batchnorm": self.sync_batchnorm,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        de = keras.saving.deserialize_keras_object
        config["classifier"] = de(config["classifier"], custom_objects=custom_objects)
        for key in ("attack", "eval_attack", "weight_averaging", "awp"):
            if config.get(key) is not None:
                config[key] = de(config[key], custom_objects=custom_objects)
        config["losses"] = [de(l, custom_objects=custom_objects) for l in config["losses"]]
        return cls(**config)
