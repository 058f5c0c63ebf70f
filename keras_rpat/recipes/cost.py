"""What a run plan costs: model passes per step, FLOPs, and GPU-hours at an assumed throughput.

An estimate, not a measurement (docs/guides/recipes.md#cost). The unit is `F`, one forward pass of one
image through the run's network. A backward pass to the input only (an attack's input gradient) counts
1 F; a backward pass with the weight gradients 2 F (the usual 1:2 forward:backward ratio of a
convolutional network: the gradients of the activations and of the weights each cost about a forward).

Per training image and step (`step_passes`):

- the attack: `num_steps` x (forward + input backward) = 2 F a step, plus the KL attack's forward of the
  clean image (TRADES' `loss="kl"`) and the SOTAs training-mode attack's last forward;
- the views the active losses need (`clean`, `adv`, `interp`, `clean_kl`): a training forward and a
  backward with weight gradients each, 3 F; the weight-averaged teacher's views (ReBAT, RPAT++ from
  their epoch 105): a forward each;
- the clean accuracy's inference forward when no loss has the clean view; ReBAT's post-step clean
  forward;
- AWP, from its first epoch on: its ascent gradient is one more forward and weight backward of every
  view, 3 F a view;
- Consistency-AT trains on two augmented copies of every image: all of it twice.

Per test image and epoch, the best-checkpoint selection: a clean forward, a PGD-`select_steps` and the
forward of its result. Per checkpoint, the evaluations: a clean forward; a PGD-N: 2N + 1 F (R restarts:
R (2N + 1) + R - 1); AutoAttack: at most `AUTOATTACK_PASSES` F an image (every image robust through every
attack of the standard version; it stops attacking an image once fooled, so a robust model's cost is
near this bound). Optimizer updates, weight averaging, BatchNorm and activations are left out (the
convolutions are above 99% of a forward's FLOPs).

`FORWARD_FLOPS` is each network's forward, counted from its Keras model by `forward_flops`
(tests/test_recipe_beyond.py recomputes the table): 2 FLOPs per multiply-add of every convolution and dense
layer, for a 32x32x3 image and 10 classes. Tiny-ImageNet's 64x64 images go through a stride-2 stem to
the same 32x32 maps, so they cost the same; 100 or 200 classes add under 0.1%.

Importing this module loads no framework (a `--dry-run` prints the estimate without Keras).
"""

import math

from keras_rpat import _names
from keras_rpat import method_presets
from keras_rpat._epochs import scale_epoch
from keras_rpat.recipes.plan import SMOKE
from keras_rpat.recipes.plan import awp_first_epoch

__all__ = [
    "DEFAULT_GPU_TFLOPS",
    "FORWARD_FLOPS",
    "estimate",
    "forward_flops",
    "step_passes",
]

# Sustained training throughput the GPU-hour estimate divides by (an assumption, not a measurement):
# an A100-class GPU at about a third of its 156 TFLOP/s TF32 tensor-core peak, float32 weights
# (docs/guides/recipes.md#cost). `--gpu-tflops` replaces it.
DEFAULT_GPU_TFLOPS = 50.0

# FLOPs of one forward pass of one 32x32x3 image, 10 classes (`forward_flops` of `keras_rpat.models.get(arch)`);
# `small_cnn` at the smoke runs' size (`plan.SMOKE`: widths (4, 8, 8), 16x16 images).
FORWARD_FLOPS = {
    "resnet18": 1_110_845_440,
    "resnet18_bottleneck": 1_454_809_088,
    "preact_resnet18": 1_110_845_440,
    "wide_resnet28_10": 10_486_657_536,
    "wide_resnet34_10": 13_317_812_736,
    "dm_wide_resnet28_10": 10_486_657_536,
    "small_cnn": 110_752,
}

# Forward-equivalents per image of the standard AutoAttack when every image stays robust (the bound):
# APGD-CE 100 iterations, APGD-T 9 targets x 100, FAB-T 9 targets x 100 (a forward and a Jacobian of two
# logits, about 3 F, an iteration), Square 5,000 queries (a forward each).
AUTOATTACK_PASSES = 2 * 100 + 9 * 2 * 100 + 9 * 3 * 100 + 5_000

# Views whose forward is an inference forward of the teacher (no gradient).
_TEACHER_VIEWS = ("teacher_clean", "teacher_adv", "teacher_interp")
# The views each loss of `keras_rpat.losses` needs (its `required_views`; tests/test_recipe_beyond.py checks them).
LOSS_VIEWS = {
    "CrossEntropy": ("clean",),
    "AdversarialCrossEntropy": ("adv",),
    "TRADES": ("clean", "adv", "clean_kl"),
    "MART": ("clean", "adv"),
    "Consistency": ("adv",),
    "RobustPerception": ("adv", "interp", "clean"),
    "BoAT": ("adv", "teacher_adv"),
    "RPATPlusPlus": ("adv", "teacher_clean", "teacher_interp"),
}


def step_passes(preset, norm="linf", epoch=0, epochs=None, options=None, awp=False, train_steps=None):
    """Forward-equivalents (F) of one training image in one step of a preset (see the module docstring).

    Args:
        preset: a preset name (`"trades+rpat"`).
        norm: the threat model (its attack's steps).
        epoch: the (0-based) epoch of the step: the losses and attack schedule active then.
        epochs: the run's length (default: the preset's); the phases start at their epochs scaled to it
            as `Preset.with_epochs` scales them (`keras_rpat.optimizers.scale_epoch`).
        options: the run's options (`stronger_attack`).
        awp: whether AWP runs in this step.
        train_steps: the training attack's steps instead of the preset's (smoke runs).

    Returns:
        A dict: `attack`, `views` (training forwards and weight backwards), `other` (no-gradient forwards),
        `awp` and `total`; Consistency-AT's two augmented copies of every image count twice.
    """
    row = method_presets.row(preset)
    settings = row["settings"]
    epochs = epochs or settings["epochs"]

    def started(start):
        return epoch >= min(scale_epoch(start, epochs, settings["epochs"]), epochs - 1)

    attack = 0
    if row["attack"] is not None and row["attack"]["class_name"] == "PGD":  # RandomNoise: no forward
        config = row["attack"]["config"]
        steps = row["budgets"][norm]["num_steps"]
        if (options or {}).get("stronger_attack"):
            for start, overrides in method_presets.STRONGER_ATTACK.items():
                steps = overrides["num_steps"] if started(start) else steps
        attack = 2 * (train_steps or steps) + (config.get("loss") == "kl")
        attack += config["style"] == "sotas" and config["training"]
    losses = [spec for spec in row["losses"] if started(spec["config"].get("start_epoch", 0))]
    if preset.endswith("+rpat"):
        losses.append(method_presets.RPAT_LOSS)
    views = list(dict.fromkeys(v for spec in losses for v in LOSS_VIEWS[spec["class_name"]]))
    gradient_views = [v for v in views if v not in _TEACHER_VIEWS]
    other = len(views) - len(gradient_views)  # the teacher's forwards
    other += "clean" not in views  # the training clean accuracy's inference forward
    other += settings["post_step_clean_forward"]
    passes = {"attack": attack, "views": 3 * len(gradient_views), "other": other, "awp": 3 * len(gradient_views) * awp}
    copies = 2 if settings["two_view"] else 1
    passes = {k: v * copies for k, v in passes.items()}
    passes["total"] = sum(passes.values())
    return passes


def evaluation_passes(name, smoke_steps=None):
    """Forward-equivalents of one test image in one evaluation (`"clean"`, `"pgd20"`, `"cw20x5"`, `"autoattack"`)."""
    if name == "clean":
        return 1
    if name == "autoattack":
        return AUTOATTACK_PASSES
    _, steps, restarts = _names.pgd_evaluation(name)
    steps = smoke_steps or steps
    return restarts * (2 * steps + 1) + restarts - 1


def estimate(spec, gpu_tflops=DEFAULT_GPU_TFLOPS, n_train=None, n_test=None):
    """The compute of one `RunSpec`: FLOPs of training, selection and evaluation, and GPU-hours.

    Args:
        spec: a `plan.RunSpec`.
        gpu_tflops: the sustained throughput assumed (TFLOP/s).
        n_train, n_test: the dataset's sizes (default: CIFAR's 50,000 and 10,000; 100,000 and 10,000
            for Tiny-ImageNet; the smoke data's for a smoke run).

    Returns:
        A dict: `forward_flops`, `step_passes`, `images_per_epoch`, `train_flops`, `select_flops`,
        `eval_flops`, `flops`, `gpu_hours` (`step_passes`: those of the last epoch, every phase
        started); or None when the network's FLOPs are not in `FORWARD_FLOPS`.
    """
    arch = "small_cnn" if spec.smoke else spec.arch
    flops = FORWARD_FLOPS.get(arch)
    if not flops:
        return None
    if spec.smoke:
        n_train, n_test = SMOKE["n_train"], SMOKE["eval_n"]
    if n_train is None:
        n_train = 100_000 if spec.dataset == "tiny_imagenet" else 50_000
    if n_test is None:
        n_test = 10_000
    train_steps = SMOKE["train_steps"] if spec.smoke else None
    # An epoch is ceil(N / B) full batches (with generated data too: datasets.TrainSequence).
    images_per_epoch = math.ceil(n_train / spec.batch_size) * spec.batch_size
    awp_from = awp_first_epoch(spec)

    def passes(epoch):
        awp = awp_from is not None and epoch >= awp_from
        return step_passes(spec.preset, spec.norm, epoch, spec.epochs, spec.options, awp, train_steps)

    per_epoch = [passes(epoch)["total"] for epoch in range(spec.epochs)]
    train = images_per_epoch * sum(per_epoch) * flops
    select_steps = SMOKE["select_steps"] if spec.smoke else spec.select_steps
    select = spec.epochs * n_test * (1 + 2 * select_steps + 1) * flops
    smoke_steps = SMOKE["eval_steps"] if spec.smoke else None
    per_image = sum(evaluation_passes(name, smoke_steps) for name in ["clean", *spec.eval_attacks] if name != "clean")
    evaluation = len(spec.checkpoints) * n_test * (1 + per_image) * flops
    total = train + select + evaluation
    return {
        "forward_flops": flops,
        "step_passes": passes(spec.epochs - 1),  # the last epoch's: every phase started
        "images_per_epoch": images_per_epoch,
        "train_flops": train,
        "select_flops": select,
        "eval_flops": evaluation,
        "flops": total,
        "gpu_hours": total / (gpu_tflops * 1e12) / 3600,
    }


def forward_flops(model):
    """FLOPs of one forward pass of one image through a Keras model: 2 per multiply-add of its
    convolutions (`Conv2D`) and dense layers, at the model's input size.

    Example:

    >>> forward_flops(keras_rpat.models.get("preact_resnet18"))
    1110845440
    """
    import keras

    total = 0
    for layer in _layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            total += 2 * math.prod(_spatial(layer)) * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * math.prod(layer.kernel.shape)
    return int(total)


def _layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _layers(layer)
        else:
            yield layer


def _spatial(layer):
    shape = layer.output.shape
    return shape[1:3] if layer.data_format == "channels_last" else shape[2:4]
