"""An evaluation as a RobustBench `model_info` record (`keras-rpat eval --robustbench-json`).

RobustBench lists each model of a leaderboard as one JSON file,
`model_info/<dataset>/<Linf|L2>/<model name>.json` in github.com/RobustBench/robustbench,
with the fields of its `ModelInfo` (robustbench/utils.py): `link`, `name`,
`authors`, `additional_data`, `number_forward_passes`, `dataset`, `venue`,
`architecture`, `eps` (`"8/255"`), `clean_acc`, `reported` and `autoattack_acc`
(percent, as strings with two decimals) and `footnote`. `robustbench_record`
fills those an evaluation knows and leaves the paper's (`link`, `name`,
`authors`, `venue`, `reported`, `additional_data`) `None` for the author to fill in;
it adds `threat_model`, `n_examples` and the AutoAttack version and attacks, which
RobustBench keeps in the folder name or assumes (the full test set, standard AutoAttack).
"""

import re

from keras_rpat import _io

__all__ = ["ROBUSTBENCH_FIELDS", "architecture_name", "robustbench_record", "write_robustbench_json"]

# RobustBench's `ModelInfo` fields of an L-inf / L2 entry, in its order.
ROBUSTBENCH_FIELDS = (
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "footnote",
)
# RobustBench's threat-model folders.
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}
# keras_rpat model names -> RobustBench's spelling ("wide_resnet28_10" -> "WideResNet-28-10").
_ARCHITECTURES = (
    (re.compile(r"wide_resnet(\d+)_(\d+)"), "WideResNet-{0}-{1}"),
    (re.compile(r"preact_resnet(\d+)"), "PreActResNet-{0}"),
    (re.compile(r"resnet(\d+)"), "ResNet-{0}"),
)


def architecture_name(model_name):
    """RobustBench's name of a keras_rpat architecture (`"wide_resnet28_10"` -> `"WideResNet-28-10"`);
    another name is returned unchanged."""
    for pattern, template in _ARCHITECTURES:
        match = pattern.fullmatch(str(model_name))
        if match:
            return template.format(*match.groups())
    return model_name


def _eps_text(epsilon):
    """`"8/255"` for a multiple of 1/255 (RobustBench's spelling), else the number (`"0.5"`)."""
    steps = epsilon * 255
    return f"{round(steps)}/255" if abs(steps - round(steps)) < 1e-6 else f"{epsilon:g}"


def robustbench_record(result, dataset, architecture, test_size=None):
    """The RobustBench `model_info` record of an `EvalResult` that holds an AutoAttack accuracy.

    Args:
        result: an `EvalResult` of `evaluate(..., attacks=[..., "autoattack"])`.
        dataset: the dataset's name (`"cifar10"`).
        architecture: the architecture, as RobustBench names it (`architecture_name`).
        test_size: the size of the whole test split; an evaluation on fewer
            images says so in the footnote.

    Returns:
        A dict: RobustBench's fields (`ROBUSTBENCH_FIELDS`), then `threat_model`,
        `n_examples`, `autoattack_version` and `autoattack_attacks`.
    """
    if result.autoattack is None:
        raise ValueError(
            "A RobustBench record holds the AutoAttack accuracy: evaluate with 'autoattack' among the attacks "
            f"(e.g. attacks='clean,autoattack'). Received: attacks={result.attacks}"
        )
    notes = []
    if test_size is not None and result.n < test_size:
        notes.append(f"Evaluated on {result.n} of the {test_size} test images.")
    if result.autoattack_version != "standard":
        attacks = ", ".join(result.autoattack_attacks or [])
        notes.append(f"AutoAttack version '{result.autoattack_version}' ({attacks}), not the standard one.")
    record = dict.fromkeys(ROBUSTBENCH_FIELDS)
    record.update(
        number_forward_passes=1,
        dataset=dataset,
        architecture=architecture,
        eps=_eps_text(result.epsilon),
        clean_acc=f"{result.clean:.2f}",
        autoattack_acc=f"{result.autoattack:.2f}",
        footnote=" ".join(notes) or None,
    )
    record.update(
        threat_model=THREAT_MODELS[result.norm],
        n_examples=result.n,
        autoattack_version=result.autoattack_version,
        autoattack_attacks=result.autoattack_attacks,
    )
    return record


def write_robustbench_json(path, result, dataset, architecture, test_size=None):
    """Writes `robustbench_record(...)` to `path` as JSON, atomically; returns `path`."""
    return _io.atomic_write_json(path, robustbench_record(result, dataset, architecture, test_size))
