"""What a stage's bytes depend on besides its config and inputs: the digest of its code (its module
and every project module it imports, found by reading the import statements, never listed by hand)
and the versions of the tools its process runs."""

import ast
import hashlib
import platform
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGE = "pipeline"


def _locate(name):
    """The source file of module `name`, found without importing anything (a lookup must never run a
    package's code, nor load Keras into the process that computes keys)."""
    import importlib.util
    from importlib.machinery import PathFinder

    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: located, not imported
    except (ImportError, ValueError):
        return None
    for part in rest:
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = PathFinder.find_spec(f"{spec.name}.{part}", spec.submodule_search_locations)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _module_file(name, packages, within=()):
    """The source file of module `name` if it belongs to one of `packages` (top-level names) or lies
    inside one of the directories `within`, else None."""
    if name.partition(".")[0] not in packages and not within:
        return None
    path = _locate(name)
    if path is None:
        return None
    if name.partition(".")[0] in packages or any(Path(d) in path.resolve().parents for d in within):
        return path
    return None


def _imports(name, path, tree, packages, within=()):
    """Project modules that module `name` (at `path`) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    modules = set()
    for module in found:
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            modules.add(".".join(parts[:i]))
    return {m for m in modules if _module_file(m, packages, within)}


def _code_files(path, tree):
    """Files a module declares as part of its code without importing them (`CODE_FILES = (...)`,
    names beside the module): a script it runs on a device, a model it ships."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CODE_FILES" for t in node.targets):
            return [path.parent / name for name in ast.literal_eval(node.value)]
    return []


# What a stage module gives the publishing step, which runs in the build's own process and is redone on
# every publish (`pipeline.stages`): never part of the stage's bytes, so never part of its key.
PUBLISHING = frozenset({"manifest", "publish", "gate", "report", "SCHEMA"})


def _stage_code(tree):
    """A stage module's tree without its publishing hooks (a module that defines `run` is a stage's);
    another module's tree as it is."""
    if not any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body):
        return tree

    def publishing(node):
        if isinstance(node, ast.FunctionDef):
            return node.name in PUBLISHING
        return isinstance(node, ast.Assign) and all(getattr(t, "id", None) in PUBLISHING for t in node.targets)

    return ast.Module(body=[n for n in tree.body if not publishing(n)], type_ignores=[])


@lru_cache(maxsize=None)
def _parse(source):
    """(sha256 of the syntax tree, the tree): comments and formatting do not count, nor a stage
    module's publishing hooks (PUBLISHING); the tree is what counts, so their imports do not either."""
    tree = _stage_code(ast.parse(source))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest(), tree


def code_digest(*modules, within=()):
    """(digest, module names): the sha256 over `modules` and every module of this package (or of a
    root module's own package, or inside the directories `within`) that they reach by import."""
    packages = {PACKAGE} | {m.partition(".")[0] for m in modules}
    within = [Path(d).resolve() for d in within]
    seen, todo, files = {}, list(modules), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name, packages, within)
        if path is None:
            raise ValueError(f"the module {name} has no Python source here")
        digest, tree = _parse(path.read_bytes())
        seen[name] = digest
        todo.extend(_imports(name, path, tree, packages, within))
        files.extend(_code_files(path, tree))
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(f"{name}:{seen[name]}\n".encode())
    for f in sorted(files):
        h.update(f"{f.name}:{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest(), sorted(seen)


def versions(distributions):
    """{distribution: installed version or None}, plus the Python version."""
    found = {"python": platform.python_version()}
    for dist in distributions:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def loaded_toolchain():
    """Versions of every installed distribution whose modules this process imported: the toolchain
    that actually made a stage's outputs (recorded with them, and in the manifest)."""
    import sys

    top = {name.partition(".")[0] for name in list(sys.modules)}  # before this function imports anything
    from packaging.utils import canonicalize_name

    owners = metadata.packages_distributions()
    dists = sorted({canonicalize_name(d) for name in top for d in owners.get(name, ())})  # PEP 503 names
    return versions(dists)


# What a stage's process may load without declaring it in `toolchain`: edgebuild itself (keyed by its
# code digest), the interpreter and its installer, the progress bar, and what Keras and JAX import when
# it is installed but never use for a stage's outputs: plotting (matplotlib and its own dependencies),
# HTTP for downloads edgebuild never makes (requests and its), pickling for distributed runs, a backport.
UNKEYED = frozenset({
    "edgebuild", "python", "setuptools", "tqdm",
    "matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver", "pyparsing", "python-dateutil",
    "requests", "certifi", "charset-normalizer", "idna", "urllib3", "cloudpickle", "backports-strenum",
})


def requirement_closure(names):
    """The distributions `names` are, and every one they require (installed metadata, extras off)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def undeclared(loaded, declared):
    """The distributions a stage's process loaded (its record's toolchain) that neither its declared
    toolchain, what those require, nor UNKEYED covers: versions that could change its bytes unkeyed."""
    return sorted(set(loaded) - requirement_closure(declared) - UNKEYED)
