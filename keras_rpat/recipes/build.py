"""Building one run of a recipe: the preset with the run's options, the data, the model, the compiled trainer.

`build_run(spec)` is step 2 of `experiment.run_experiment`, and
`evaluation_settings(spec, preset)` its evaluation protocol (step 3), recorded
in `results.json` and read back by every evaluation.
"""

import copy
import dataclasses
import os
import warnings


from keras_rpat import _data_checks
from keras_rpat import _names
from keras_rpat import autoattack
from keras_rpat import awp as awp_lib
from keras_rpat import backend as rpat_backend
from keras_rpat import datasets
from keras_rpat import evaluation
from keras_rpat import losses as losses_lib
from keras_rpat import method_presets
from keras_rpat import models
from keras_rpat import presets
from keras_rpat.recipes.plan import SMOKE
from keras_rpat.recipes.plan import awp_first_epoch
from keras_rpat.recipes.schema import RP_OPTIONS
from keras_rpat.recipes.schema import RecipeError
from keras_rpat.recipes.schema import missing_generated_message

__all__ = ["Run", "build_preset", "build_run", "evaluation_settings"]


def build_preset(spec):
    """The `keras_rpat.presets.Preset` of a run, options and epochs applied."""
    opts = spec.options
    preset = presets.get(
        spec.preset,
        norm=spec.norm,
        l2_step_size=spec.l2_step_size if spec.norm == "l2" else None,
        stronger_attack=bool(opts.get("stronger_attack", False)),
        teacher_training=_names.TEACHER_TRAINING[opts.get("teacher_training", "inference")],
    )
    changes = {"losses": [_with_loss_options(loss, opts) for loss in preset.losses]}
    if "lr_factor" in opts:
        changes["lr_factor"] = float(opts["lr_factor"])
    if "learning_rate" in opts:
        changes["learning_rate"] = float(opts["learning_rate"])
    if spec.smoke and preset.attack is not None and hasattr(preset.attack, "num_steps"):
        changes["attack"] = _with_steps(preset.attack, SMOKE["train_steps"])
    preset = preset.with_options(**changes)
    preset = preset.with_ingredients(**{k: opts[k] for k in method_presets.INGREDIENT_OPTIONS if k in opts})
    if spec.epochs != preset.epochs:
        preset = preset.with_epochs(spec.epochs)
    if "awp_gamma" in opts:  # after `with_epochs`: `awp_warmup` is an epoch of this run, not scaled
        preset = preset.with_options(awp=awp_lib.AWP(opts["awp_gamma"], warmup_epochs=awp_first_epoch(spec)))
        if preset.awp.warmup_epochs >= spec.epochs:
            warnings.warn(
                f"AWP starts at epoch {preset.awp.warmup_epochs} (0-based), but the run has {spec.epochs} epochs: "
                f"it never runs. Received: awp_warmup={preset.awp.warmup_epochs}; pass a smaller one.",
                UserWarning,
                stacklevel=2,
            )
    return preset


def _with_loss_options(loss, opts):
    """A copy of `loss` with the run's RobustPerception options, or its `beta` (TRADES, MART, BoAT, RPAT++)."""
    config = loss.get_config()
    if isinstance(loss, losses_lib.RobustPerception):
        config.update({arg: opts[key] for key, arg in RP_OPTIONS.items() if key in opts})
    elif (
        isinstance(loss, (losses_lib.TRADES, losses_lib.MART, losses_lib.BoAT, losses_lib.RPATPlusPlus))
        and "beta" in opts
    ):
        config["beta"] = float(opts["beta"])
    return type(loss).from_config(config)


def _with_steps(attack, num_steps):
    """A copy of `attack` with `num_steps` steps (also in its schedule's overrides)."""
    attack = copy.deepcopy(attack)
    attack.num_steps = num_steps
    for overrides in (attack.schedule or {}).values():
        if "num_steps" in overrides:
            overrides["num_steps"] = num_steps
    return attack


def _load_dataset(spec, data_dir, cache):
    if spec.smoke and spec.dataset.endswith(".npz") and not os.path.isfile(spec.dataset):
        # The smoke run trains on synthetic data, but the command it stands for must still work.
        raise FileNotFoundError(f"--dataset {spec.dataset}: no such file (checked in smoke runs too).")
    if spec.smoke:
        key = ("synthetic", SMOKE["n_train"], SMOKE["n_test"], SMOKE["image_size"])
        if key not in cache:
            cache[key] = datasets.load(
                "synthetic",
                n_train=SMOKE["n_train"],
                n_test=SMOKE["n_test"],
                num_classes=SMOKE["num_classes"],
                image_size=SMOKE["image_size"],
            )
        return cache[key]
    key = (spec.dataset, None if data_dir is None else os.fspath(data_dir))
    if key not in cache:
        cache[key] = datasets.load(spec.dataset, data_dir=data_dir)
    return cache[key]


def _load_generated(spec, ds, data_dir):
    """The run's generated data (memory-mapped), or None; a smoke run mixes in synthetic images instead."""
    if spec.generated is None:
        return None
    if spec.smoke:  # the file may not exist where a smoke run checks the pipeline (e.g. a fresh clone)
        stand_in = datasets.load(
            "synthetic",
            n_train=SMOKE["n_train"],
            n_test=1,
            num_classes=ds.num_classes,
            image_size=SMOKE["image_size"],
            seed=1,
        )
        name = f"synthetic stand-in for {spec.generated['path'] or 'the generated data'}"
        return datasets.GeneratedData(stand_in.x_train, stand_in.y_train, ds.num_classes, ds.image_shape, name=name)
    if spec.generated["path"] is None:
        raise RecipeError(missing_generated_message(spec.recipe))
    return datasets.GeneratedData.open(spec.generated["path"], ds.num_classes, ds.image_shape, data_dir=data_dir)


def _build_model(spec, preset, ds):
    # A preset without normalisation leaves the network's default: none for the paper's networks, the
    # dataset's statistics inside DeepMind's (as RobustBench's and Wang et al.'s DMWideResNet hold them).
    normalize = {} if preset.normalize is None else {"normalize": preset.normalize}
    if spec.smoke:
        return models.get(
            "small_cnn",
            num_classes=ds.num_classes,
            input_shape=ds.image_shape,
            stem_stride=spec.stem_stride,
            widths=SMOKE["widths"],
            **normalize,
        )
    return models.get(
        spec.arch, num_classes=ds.num_classes, input_shape=ds.image_shape, stem_stride=spec.stem_stride, **normalize
    )


def _threat(spec, preset):
    """(norm, epsilon, step_size) of the run's evaluation."""
    budget = method_presets.budget(spec.preset, spec.norm)
    step = spec.l2_step_size if spec.norm == "l2" else budget["step_size"]
    attack = preset.attack
    if attack is not None and getattr(attack, "norm", None) == spec.norm and hasattr(attack, "step_size"):
        step = attack.step_size
    return spec.norm, budget["epsilon"], step


@dataclasses.dataclass
class Run:
    """What `build_run` builds for one `RunSpec`."""

    preset: object
    dataset: object
    model: object
    train_seq: object
    trainer: object
    x_test: object
    y_test: object


def build_run(spec, data_dir=None, cache=None):
    """The preset, data, model and compiled trainer of a run (seeded with `spec.seed`)."""
    rpat_backend.set_random_seed(spec.seed)
    preset = build_preset(spec)
    ds = _load_dataset(spec, data_dir, {} if cache is None else cache)
    if spec.batch_size > len(ds.x_train):
        warnings.warn(
            f"The batch size {spec.batch_size} is larger than the training set ({len(ds.x_train)} images): every "
            f"epoch is one step on a batch of {len(ds.x_train)}. Pick a --batch-size below {len(ds.x_train)}.",
            stacklevel=2,
        )
    model = _build_model(spec, preset, ds)
    train_seq, _ = datasets.make_datasets(
        ds,
        batch_size=spec.batch_size,
        pipeline=preset.pipeline,
        two_view=preset.two_view,
        cutmix=bool(spec.options.get("cutmix", False)),
        seed=spec.seed,
        generated=_load_generated(spec, ds, data_dir),
        generated_fraction=0.0 if spec.generated is None else spec.generated["fraction"],
    )
    trainer = preset.build_trainer(model, steps_per_epoch=len(train_seq), seed=spec.seed)
    trainer.compile(optimizer=preset.optimizer(len(train_seq)))
    x_test = _data_checks.to_float01(ds.x_test)
    return Run(preset, ds, model, train_seq, trainer, x_test, ds.y_test)


def evaluation_settings(spec, preset):
    """The evaluation protocol of a run; recorded in `results.json` and read by every evaluation."""
    norm, epsilon, step_size = _threat(spec, preset)
    smoke = spec.smoke
    settings = {
        "attacks": list(spec.eval_attacks),
        "checkpoints": list(spec.checkpoints),
        "norm": norm,
        "epsilon": epsilon,
        "step_size": step_size,
        "pgd_steps": SMOKE["eval_steps"] if smoke else evaluation.PGD_EVAL_STEPS,
        "n": SMOKE["eval_n"] if smoke else None,
        "batch_size": SMOKE["eval_batch_size"] if smoke else evaluation.EVAL_BATCH_SIZE,
        "autoattack_batch_size": SMOKE["aa_batch_size"] if smoke else autoattack.AA_BATCH_SIZE,
        "autoattack_version": "custom" if smoke else spec.autoattack_version,
        "autoattack_attacks": SMOKE["aa_attacks"] if smoke else None,
        "autoattack_options": SMOKE["aa_options"] if smoke else None,
        "select_steps": SMOKE["select_steps"] if smoke else spec.select_steps,
        "perception": None,
    }
    if spec.perception is not None:
        settings["perception"] = dict(
            spec.perception,
            perturbation=spec.perturbation,
            num_steps=SMOKE["eval_steps"] if smoke else spec.perception["num_steps"],
        )
    return settings
