"""The suite's markers and options (`tests/conftest.py`) do what they say."""

import pathlib

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (pathlib.Path(__file__).parent / "conftest.py").read_text()

TESTS = """
import pytest

@pytest.mark.download
def test_download():
    pass

@pytest.mark.gpu
def test_gpu():
    pass

@pytest.mark.slow
def test_slow():
    pass

def test_plain():
    pass
"""


@pytest.fixture
def suite(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_markers=TESTS)
    return pytester


def _gpu():
    from conftest import has_gpu

    return has_gpu()


def test_download_tests_are_skipped_unless_asked_for(suite):
    gpu = _gpu()
    suite.runpytest("--strict-markers").assert_outcomes(passed=2 + gpu, skipped=2 - gpu)
    suite.runpytest("--strict-markers", "--run-download").assert_outcomes(passed=3 + gpu, skipped=1 - gpu)


def test_slow_tests_run_by_default_and_can_be_deselected(suite):
    result = suite.runpytest("--strict-markers", "-m", "not slow", "--run-download")
    result.assert_outcomes(passed=2 + _gpu(), skipped=1 - _gpu(), deselected=1)


def test_skip_reasons_say_how_to_run_them(suite):
    result = suite.runpytest("-rs")
    result.stdout.fnmatch_lines(["*needs a download: pass --run-download*"])
    if not _gpu():
        result.stdout.fnmatch_lines(["*needs a GPU*"])


def test_cross_backend_tests_run_in_one_suite_only(pytester):
    import keras

    from conftest import CROSS_BACKEND_SUITE

    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_pair="import pytest\n\n@pytest.mark.cross_backend\ndef test_pair():\n    pass\n")
    result = pytester.runpytest("--strict-markers", "-rs")
    if keras.config.backend() == CROSS_BACKEND_SUITE:
        result.assert_outcomes(passed=1)
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines([f"*make test runs it in the {CROSS_BACKEND_SUITE} suite*"])
