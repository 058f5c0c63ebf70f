"""Image classifiers of the RPAT paper and of the RobustBench leaderboard, as functional Keras models.

Every builder returns a `keras.Model` that maps images (pixels in `[0, 1]`)
to logits (no softmax) and contains three named layers used by RPAT:

- `"logits"`: the final `Dense` layer.
- `"penultimate"`: the pooled feature vector entering `"logits"` (the
  second-to-last-layer perception proxy of the paper's Table 5).
- `"third_to_last"`: the flattened output of the stage before the last one
  (`layer3` for ResNets, `block2` for WideResNets), the third-to-last-layer
  proxy. To keep it inside the model graph it sits on the main path as
  `Flatten` followed by a `Reshape` back to the map (both free views).

Other layer names follow the reference PyTorch module paths with `.`
replaced by `_` (`layer1_0_conv1`, `layer1_0_shortcut_0`,
`block1_layer_0_convShortcut`, ...), so a PyTorch `state_dict` maps onto the
Keras layers by name.

Porting details (docs/algorithms.md#architectures and the porting checklist): all
convolutions are bias-free; 3x3 convolutions with stride 2 use symmetric
zero padding (`ZeroPadding2D(1)` + `"valid"`), as PyTorch does; batch
normalization is `keras_rpat.layers.BatchNorm` (PyTorch semantics); weights
use PyTorch's default initialisers (WideResNet convolutions: Kaiming-normal,
fan-out; WideResNet classifier bias: zeros).

RobustBench's networks beyond the paper's: its default `PreActResNet18()`
(`preact_resnet18_robustbench`), `WideResNet(bias_last=False)` (`bias_last`
of the WideResNets) and DeepMind's SiLU networks of Gowal et al. 2020,
Rebuffi et al. 2021 and Wang et al. 2023 (`dm_wide_resnet`,
`dm_preact_resnet18`), which normalise their input inside the network and
keep DeepMind's layer names (`init_conv`, `layer_0_block_0_batchnorm_0`,
..., `logits`). Every RobustBench CIFAR family loads from and exports to its
PyTorch `state_dict` (`from_torch`, `torch_state_dict`), the unused
`sub_block1` group of RobustBench's `WideResNet(sub_block1=True)` (TRADES,
MART) included.

One module a job: `builder` (the shared arguments and layers), `resnet`,
`wrn`, `dm_resnet`, `cnn` (the architectures by family; no module is named
after a builder, as `wide_resnet` and `small_cnn` are functions of this package),
`registry` (`get` by name), `features` (`feature_model`) and `torch_checkpoints`
(PyTorch `state_dict`s in and out).
"""

from keras_rpat._names import canonical_model_name as canonical_name
from keras_rpat._names import list_models
from keras_rpat.models.cnn import small_cnn
from keras_rpat.models.dm_resnet import dm_preact_resnet18
from keras_rpat.models.dm_resnet import dm_wide_resnet
from keras_rpat.models.dm_resnet import dm_wide_resnet28_10
from keras_rpat.models.dm_resnet import dm_wide_resnet34_10
from keras_rpat.models.dm_resnet import dm_wide_resnet34_20
from keras_rpat.models.dm_resnet import dm_wide_resnet70_16
from keras_rpat.models.features import feature_model
from keras_rpat.models.registry import get
from keras_rpat.models.resnet import preact_resnet18
from keras_rpat.models.resnet import preact_resnet18_robustbench
from keras_rpat.models.resnet import resnet18
from keras_rpat.models.resnet import resnet18_bottleneck
from keras_rpat.models.torch_checkpoints import from_torch
from keras_rpat.models.torch_checkpoints import load_torch_weights
from keras_rpat.models.torch_checkpoints import torch_state_dict
from keras_rpat.models.wrn import wide_resnet
from keras_rpat.models.wrn import wide_resnet28_10
from keras_rpat.models.wrn import wide_resnet34_10

__all__ = [
    "get",
    "list_models",
    "canonical_name",
    "feature_model",
    "resnet18",
    "resnet18_bottleneck",
    "preact_resnet18",
    "preact_resnet18_robustbench",
    "wide_resnet",
    "wide_resnet34_10",
    "wide_resnet28_10",
    "small_cnn",
    "dm_wide_resnet",
    "dm_wide_resnet28_10",
    "dm_wide_resnet34_10",
    "dm_wide_resnet34_20",
    "dm_wide_resnet70_16",
    "dm_preact_resnet18",
    "from_torch",
    "load_torch_weights",
    "torch_state_dict",
]
