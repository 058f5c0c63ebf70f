"""Markers and options of the test suite (see CONTRIBUTING.md, "Tests").

| marker | meaning | runs |
|---|---|---|
| `slow` | a longer end-to-end test (still CPU-only, no download) | always; deselect with `-m "not slow"` while iterating |
| `download` | needs the network to download a dataset | only with `--run-download` |
| `gpu` | needs a GPU | only when the active backend sees one |
| `cross_backend` | runs the same computation on every backend (the others in subprocesses) and compares them | in the torch suite only (`CROSS_BACKEND_SUITE`): once per `make test` |

The suite runs once per backend (`KERAS_BACKEND=torch`, then `tensorflow`, then `jax`).
"""

import keras_rpat  # noqa: F401  (selects the default backend before keras)

import keras
import pytest
from keras import distribution

MARKERS = {
    "slow": "longer end-to-end tests (still CPU-only); deselect with -m 'not slow'",
    "download": "needs network access to download a dataset (skipped unless --run-download)",
    "gpu": "needs a GPU visible to the active Keras backend (skipped when none is present)",
    "cross_backend": "compares every backend (the others in subprocesses); runs in the torch suite only",
}
# The one suite of `make test` that runs the `cross_backend` tests (each compares all the backends).
CROSS_BACKEND_SUITE = "torch"


def pytest_addoption(parser):
    parser.addoption(
        "--run-download",
        action="store_true",
        default=False,
        help="run the tests marked `download` (they fetch datasets from the network)",
    )


def pytest_configure(config):
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def has_gpu():
    """Whether the active Keras backend sees a GPU (no GPU framework is initialised otherwise)."""
    try:
        return bool(distribution.list_devices("gpu"))
    except Exception:  # a backend that cannot list GPUs has none for us
        return False


def pytest_collection_modifyitems(config, items):
    run_download = config.getoption("--run-download")
    gpu = None
    backend = keras.config.backend()
    for item in items:
        if "cross_backend" in item.keywords and backend != CROSS_BACKEND_SUITE:
            reason = f"compares every backend: make test runs it in the {CROSS_BACKEND_SUITE} suite"
            item.add_marker(pytest.mark.skip(reason=reason))
        if "download" in item.keywords and not run_download:
            item.add_marker(pytest.mark.skip(reason="needs a download: pass --run-download"))
        if "gpu" in item.keywords:
            gpu = has_gpu() if gpu is None else gpu
            if not gpu:
                item.add_marker(pytest.mark.skip(reason=f"needs a GPU; the {backend} backend sees none"))
