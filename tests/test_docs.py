"""The docs the code cites exist: every Algorithms-page anchor (`docs/algorithms.md#<name>`) named in the package,
the tests, the recipes, the README and CONTRIBUTING is an anchor of that page.

(`make docs` builds the site with `--strict`, which checks the links inside the site.)
"""

import pathlib
import re

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
