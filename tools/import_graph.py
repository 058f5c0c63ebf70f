"""Prints keras_rpat's import graph in layers; exits 1 on a rule broken.

    python tools/import_graph.py            # the layers, leaves first
    python tools/import_graph.py --quiet    # only the problems

Reads the source with `ast` (nothing is imported) and checks the rules of
CONTRIBUTING.md "Architecture rules" that import-linter cannot express (its
contracts in pyproject.toml, run by `lint-imports`, check the layers and that
no package has an import cycle):

1. No module imports another module of the package inside a function, except
   the lazy imports listed in `LAZY_IMPORTS` (each with its reason).
2. No module uses another module's `_private` name (`from m import _x` or
   `m._x`); internal modules such as `keras_rpat._checks` have public names.

A submodule's implicit import of its parent package is not an edge.
"""

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_rpat"

# Function-level imports that are allowed, and why.
LAZY_IMPORTS = {
    (
        "keras_rpat.fast_path",
        "keras_rpat.fast_path.runtime",
    ): "imports torch; the fast path's entry points answer None / the model on tensorflow without it",
    (
        "keras_rpat.autoattack",
        "keras_rpat.autoattack.cascade",
    ): "the cascade imports torch; the facade stays torch-free",
    (
        "keras_rpat.autoattack.torch_bridge",
        "keras_rpat.autoattack.jax_bridge",
    ): "imports jax; the bridge of a torch model needs no JAX",
    (
        "keras_rpat.optimizers",
        "keras_rpat.backend.torch_optimizers",
    ): "imports torch; the fused SGD step runs on torch only",
    (
        "keras_rpat.models.torch_checkpoints",
        "keras_rpat.torch_models",
    ): "imports torch to read a .pt file; models stays torch-free under the tensorflow backend",
    (
        "keras_rpat.cli.options",
        "keras_rpat.backend",
    ): "imports Keras and the backend for the start-of-run line; the options parse without a framework",
    (
        "keras_rpat.cli.launch",
        "keras_rpat.backend",
    ): "imports Keras and the backend when a run starts; `recipe list` and argument errors answer without them",
    ("keras_rpat.cli.demo", "keras_rpat.demo"): "imports Keras when the demo runs; its option errors answer without it",
    **{
        ("keras_rpat.cli.convert", f"keras_rpat.{module}"): (
            "imports Keras and torch when `convert` / `export` runs; their argument errors answer without them"
        )
        for module in ("layers", "models", "torch_models")
    },
    **{
        ("keras_rpat.cli.evaluate", f"keras_rpat.{module}"): (
            "imports Keras when `eval` / `autoattack` runs; their argument errors answer without it"
        )
        for module in ("autoattack", "datasets", "evaluation", "layers", "models", "trainer")
    },
}


def module_name(path, package_dir):
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def discover(package_dir=PACKAGE):
    """`{module name: path}` of every module of the package in `package_dir`."""
    return {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}


def _targets(node, modules, current):
    """The package modules an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "keras_rpat"], []
    if node.level:
        base = current.rsplit(".", node.level)[0] if node.level else current
        mod = base + ("." + node.module if node.module else "")
    else:
        mod = node.module or ""
    if mod.split(".")[0] != "keras_rpat":
        return [], []
    out, names = [], []
    for alias in node.names:
        full = f"{mod}.{alias.name}"
        if full in modules:
            out.append(full)
        else:
            out.append(mod)
            names.append((mod, alias.name))
    return out, names


def _resolve(target, modules):
    while target not in modules and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def analyse(modules, lazy=None):
    """`(edges, problems)`: module-level import edges and the rules broken."""
    lazy = LAZY_IMPORTS if lazy is None else lazy
    edges = {m: set() for m in modules}
    problems = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        in_function = {
            id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
        }
        aliases = {}  # local name -> package module
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets, names = _targets(node, modules, name)
            for t in targets:
                t = _resolve(t, modules)
                if t == name or name.startswith(t + "."):
                    continue  # itself, or its parent package
                if id(node) in in_function:
                    if (name, t) not in lazy:
                        problems.append(f"{name}:{node.lineno}: imports {t} inside a function (import it at the top)")
                    continue
                edges[name].add(t)
            for mod, imported in names:
                if _is_private(imported) and _resolve(mod, modules) != name:
                    problems.append(f"{name}:{node.lineno}: uses the private name {mod}.{imported}")
            aliases.update(_bound_modules(node, modules))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                base = _dotted(node.value)
                target = aliases.get(base, base if base in modules else None)
                if target is not None and target != name:
                    problems.append(f"{name}:{node.lineno}: uses the private name {target}.{node.attr}")
    return edges, problems


def _bound_modules(node, modules):
    """The local names an import binds to package modules."""
    out = {}
    for a in node.names:
        if isinstance(node, ast.Import):
            if a.asname:
                out[a.asname] = a.name
            else:
                out[a.name] = a.name  # `import keras_rpat.x` binds the dotted name for attribute lookups
        elif node.module and f"{node.module}.{a.name}" in modules:
            out[a.asname or a.name] = f"{node.module}.{a.name}"
    return {k: v for k, v in out.items() if v in modules}


def _dotted(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def layers(edges):
    """Layer 0: modules that import nothing from the package; layer k: imports only layers < k."""
    depth = {}

    def d(v, seen=()):
        if v in depth:
            return depth[v]
        if v in seen:
            return 0
        depth[v] = 1 + max((d(w, seen + (v,)) for w in edges[v]), default=-1)
        return depth[v]

    for v in edges:
        d(v)
    out = {}
    for v, k in depth.items():
        out.setdefault(k, []).append(v)
    return [sorted(out[k]) for k in sorted(out)]


def check(package_dir=PACKAGE, lazy=None):
    """`(layers, problems)` of the package in `package_dir`."""
    edges, problems = analyse(discover(package_dir), lazy)
    return layers(edges), problems


def main(argv):
    modules = discover()
    edges, problems = analyse(modules)
    if "--quiet" not in argv:
        short = lambda m: m.replace("keras_rpat.", "") if m != "keras_rpat" else "keras_rpat (the public API)"  # noqa: E731
        print("keras_rpat import graph, leaves first (a module imports only modules of the layers above it):")
        for k, names in enumerate(layers(edges)):
            print(f"  layer {k}: " + ", ".join(short(n) for n in names))
        print("Allowed lazy imports:")
        for (src, dst), why in LAZY_IMPORTS.items():
            print(f"  {short(src)} -> {short(dst)}: {why}")
    for p in problems:
        print("PROBLEM " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
