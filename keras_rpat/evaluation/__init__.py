"""Robustness evaluation: clean, PGD-20, AutoAttack, Mean / NRR, perception.

Everything here is `keras.ops` and NumPy, so it runs unchanged on every
supported backend; AutoAttack runs through `keras_rpat.autoattack`. One
module a job: `metrics` (the accuracies, `evaluate`, `EvalResult`),
`perception` (the paper's perception analysis), `provenance` (what a
results file records besides its numbers) and `robustbench` (a result as a
RobustBench `model_info` record). All accuracies are in percent.
"""

from keras_rpat._data_checks import infer_data_format
from keras_rpat._names import EVAL_BATCH_SIZE
from keras_rpat._names import EVALUATION_ATTACKS
from keras_rpat._names import PGD_EVAL_STEPS
from keras_rpat._names import parse_attacks
from keras_rpat._progress import Progress
from keras_rpat.evaluation.metrics import EvalResult

from keras_rpat.evaluation.metrics import attack_correct  # noqa: F401  (these four: public, outside __all__, for callbacks)
from keras_rpat.evaluation.metrics import autoattack_accuracy
from keras_rpat.evaluation.metrics import clean_accuracy
from keras_rpat.evaluation.metrics import clean_correct  # noqa: F401
from keras_rpat.evaluation.metrics import evaluate
from keras_rpat.evaluation.metrics import evaluation_pgd  # noqa: F401
from keras_rpat.evaluation.metrics import mean_nrr
from keras_rpat.evaluation.metrics import percent  # noqa: F401
from keras_rpat.evaluation.metrics import pgd_accuracy
from keras_rpat.evaluation.perception import PerceptionResult
from keras_rpat.evaluation.perception import perception_analysis
from keras_rpat.evaluation.provenance import provenance
from keras_rpat.evaluation.robustbench import robustbench_record
from keras_rpat.evaluation.robustbench import write_robustbench_json

__all__ = [
    "EVALUATION_ATTACKS",
    "EVAL_BATCH_SIZE",
    "PGD_EVAL_STEPS",
    "EvalResult",
    "PerceptionResult",
    "Progress",
    "autoattack_accuracy",
    "clean_accuracy",
    "evaluate",
    "infer_data_format",
    "mean_nrr",
    "parse_attacks",
    "perception_analysis",
    "pgd_accuracy",
    "provenance",
    "robustbench_record",
    "write_robustbench_json",
]
