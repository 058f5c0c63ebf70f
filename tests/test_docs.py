"""The docs the code cites exist: every Algorithms-page anchor (`docs/algorithms.md#<name>`) named in the package,
the tests, the recipes, the README and CONTRIBUTING is an anchor of that page. The API page of `keras_rpat.models`
documents every builder.

(`make docs` builds the site with `--strict`, which checks the links inside the site.)
"""

import inspect
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CITATION = re.compile(r"docs/algorithms\.md#([A-Za-z0-9_-]+)((?:,\s*#[A-Za-z0-9_-]+)*)")


def _anchors():
    return set(re.findall(r"\{#([A-Za-z0-9_-]+)\}", (ROOT / "docs" / "algorithms.md").read_text()))


def _citations():
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    for folder, pattern in (("keras_rpat", "*.py"), ("tests", "*.py"), ("recipes", "*.toml"), ("docs", "*.md")):
        files += sorted((ROOT / folder).rglob(pattern))
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for first, more in CITATION.findall(line):
                for anchor in [first] + re.findall(r"#([A-Za-z0-9_-]+)", more):
                    yield f"{path.relative_to(ROOT)}:{number}", anchor


def test_every_cited_algorithms_anchor_exists():
    anchors = _anchors()
    citations = list(_citations())
    assert len(citations) > 50  # the package cites the page throughout
    missing = [f"{where}: #{anchor}" for where, anchor in citations if anchor not in anchors]
    assert not missing, "cited anchors missing from docs/algorithms.md:\n" + "\n".join(missing)


def test_nothing_cites_the_notes_outside_the_repository():
    hits = []
    for folder in ("keras_rpat", "tests", "recipes", "docs", "benchmarks", "tools"):
        for path in sorted((ROOT / folder).rglob("*")):
            if (
                path.suffix in (".py", ".toml", ".md")
                and path != pathlib.Path(__file__)
                and "REFERENCE" in path.read_text()
            ):
                hits.append(str(path.relative_to(ROOT)))
    for name in ("README.md", "CONTRIBUTING.md"):
        if "REFERENCE" in (ROOT / name).read_text():
            hits.append(name)
    assert not hits, f"'REFERENCE' cited in {hits}; cite docs/algorithms.md#<anchor> instead"


def test_the_models_api_page_documents_every_name_of_models_all():
    """What mkdocs.yml's API pages read (the source, with tools/griffe_builders.py): every name of
    `keras_rpat.models.__all__` is a function with its runtime parameters and its whole runtime docstring (the
    builders' are written at import, some builders are made by factories, and no submodule hides a name); a
    builder's Args name each of its parameters."""
    griffe = pytest.importorskip("griffe")
    from keras_rpat import models

    loader = griffe.GriffeLoader(
        search_paths=[str(ROOT)],
        extensions=griffe.load_extensions(f"{ROOT / 'tools' / 'griffe_builders.py'}:RuntimeBuilders"),
        docstring_parser="google",
        docstring_options={"warn_missing_types": False},
    )
    page = loader.load("keras_rpat")["models"]
    for name in models.__all__:
        runtime, documented = getattr(models, name), page[name]
        assert documented.is_function, f"keras_rpat.models.{name} is documented as: {documented.kind.value}"
        assert [parameter.name for parameter in documented.parameters] == list(inspect.signature(runtime).parameters)
        assert documented.docstring is not None and documented.docstring.value == inspect.cleandoc(runtime.__doc__)
        if name in models.list_models():
            (args,) = [section for section in documented.docstring.parse() if section.kind.value == "parameters"]
            assert sorted(arg.name for arg in args.value) == sorted(inspect.signature(runtime).parameters), name
