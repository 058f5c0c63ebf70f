"""A griffe extension (mkdocs.yml) that documents `keras_rpat.models`' builders from the imported package.

The API pages read the source and never import the package, but a builder's docstring is written at
import (`models.builder.document`) and several builders are made by factories (`resnet._variant`,
`wrn._preset`, `dm_resnet._preset`): read from the source they are functions without a docstring or
plain attributes, which the pages leave out. This imports `keras_rpat.models` (from the folder the
source is read from) and, for each name of its `__all__` that the source leaves undocumented, gives a
function its runtime `__doc__` and replaces an attribute by griffe's inspection of the function (its
runtime signature and `__doc__`). Every other object stays as read from the source.
"""

import inspect
import sys

import griffe

PACKAGE = "keras_rpat.models"


def undocumented_builders(loader, package):
    """`(builder, source object)` for each name of `package.__all__` that the source leaves without a
    docstring: a function whose docstring is written at import, or an attribute made by a factory."""
    pairs = []
    for name in package.__all__:
        builder = getattr(package, name)
        static = loader.modules_collection.get_member(f"{builder.__module__}.{builder.__qualname__}")
        if not (static.is_function and static.docstring):
            pairs.append((builder, static))
    return pairs


class RuntimeBuilders(griffe.Extension):
    """Documents the builders of `keras_rpat.models` from the imported package (see the module)."""

    def on_package(self, *, pkg, loader, **kwargs):
        if pkg.path != PACKAGE.split(".")[0]:
            return
        # griffe imports with exactly these paths: the source's folder first, then the environment.
        import_paths = [pkg.filepath.parent.parent, *sys.path]
        package = griffe.dynamic_import(PACKAGE, import_paths)
        parsing = {"parser": loader.docstring_parser, "parser_options": loader.docstring_options}
        inspected = {}  # module name: griffe's inspection of the module
        for builder, static in undocumented_builders(loader, package):
            if static.is_function:
                static.docstring = griffe.Docstring(inspect.cleandoc(builder.__doc__), parent=static, **parsing)
                continue
            if builder.__module__ not in inspected:
                inspected[builder.__module__] = griffe.inspect(
                    builder.__module__,
                    import_paths=import_paths,
                    docstring_parser=loader.docstring_parser,
                    docstring_options=loader.docstring_options,
                )
            function = inspected[builder.__module__][static.name]
            function.lineno, function.endlineno = static.lineno, static.endlineno
            static.parent.set_member(static.name, function)
