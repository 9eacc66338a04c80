"""The house rules that code review alone would not keep: the store is private
to the façade and its read/write sides, jobctl's modules import each other
without a loop, and a type checker catches a wrong call to a mutation."""

import ast
import pathlib
import textwrap

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jobctl"
# the façade, its sides and the store package: the only modules that reach the store
STORE_SIDE = {"api.py", "write.py", "queries.py", "feed.py", "verify.py"}
BACKENDS = {"jobctl.store.sqlite", "jobctl.store.postgres"}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text())


def store_reaches(tree: ast.AST) -> list[str]:
    """Where a module names a store: an attribute `store`/`_store`, or a backend module imported."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("store", "_store"):
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in BACKENDS:
            found.append(f"line {node.lineno}: from {node.module} import")
    return found


def test_only_the_facade_and_its_sides_reach_the_store():
    offenders = {
        name: where
        for name, tree in modules()
        if name not in STORE_SIDE and not name.startswith("store/") and (where := store_reaches(tree))
    }
    assert offenders == {}


def test_the_check_sees_a_module_that_reaches_the_store():
    """The rule above is not vacuous: a consumer reading `jc._store` is caught."""
    tree = ast.parse("def f(jc):\n    return jc._store.events(since=0)\n")
    assert store_reaches(tree) == ["line 2: ._store"]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, tree in modules():
        mod = "jobctl." + name[:-3].replace("/", ".").removesuffix(".__init__")
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jobctl"):
                if node.module == "jobctl":
                    deps.update(f"jobctl.{a.name}" for a in node.names)
                else:
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("jobctl."))
        graph[mod] = deps - {mod}
    return {m: {d for d in deps if d in graph} for m, deps in graph.items()}


def test_no_import_cycle_among_jobctls_modules():
    """Lazy imports count: a loop through a function-level import is a loop too
    (the store package and its PostgreSQL backend were one)."""
    graph = import_graph()
    cycles = []

    def visit(node, path):
        for dep in sorted(graph[node]):
            if dep in path:
                cycles.append(" -> ".join(path[path.index(dep) :] + [dep]))
            elif len(path) < 12:
                visit(dep, path + [dep])

    for start in graph:
        if start != "jobctl":
            visit(start, [start])
    assert cycles == []


def test_a_type_checker_catches_a_wrong_call_to_a_mutation(tmp_path):
    """transaction keeps each mutation's own signature (less the unit of work)."""
    mypy_api = pytest.importorskip("mypy.api")
    code = textwrap.dedent(
        """
        from jobctl import Jobctl
        jc = Jobctl("x.db")
        jc.retry("a", failed_children=True)
        jc.claim("p", message="go")
        jc.finish("a", "failed", message=None, exit_code=1, duration=0.5)
        jc.retry(123, failed_children="yes", bogus=1)
        jc.claim()
        jc.heartbeat("a", "b")
        """
    )
    (tmp_path / "use.py").write_text(code)
    out, _, status = mypy_api.run(
        [
            str(tmp_path / "use.py"),
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--follow-imports=silent",
        ]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    lines = {int(line.split(":")[1]) for line in errors}
    assert status == 1
    assert lines == {7, 8, 9}, out  # the three wrong calls, and none of the right ones
    assert any('"bogus"' in e for e in errors) and any('"retry"' in e and "int" in e for e in errors), out


# What a backend may define itself of SqlQueries: how it runs a query, not a query.
DIALECT_HOOKS = {
    "_query",
    "_query_light",
    "_query_locked",
    "_query_unlocked",
    "_iterate",
    "_in",
    "_execute",
    "hold_write_lock",
}


def extends(node: ast.FunctionDef) -> bool:
    """The method calls the shared one it overrides (super().name): it adds, not rewrites."""
    return any(
        isinstance(n, ast.Attribute)
        and n.attr == node.name
        and isinstance(n.value, ast.Call)
        and getattr(n.value.func, "id", "") == "super"
        for n in ast.walk(node)
    )


def backend_methods(module: str) -> set[str]:
    """The methods a backend's SqlQueries subclass writes itself (not ones that extend the shared one)."""
    tree = ast.parse((PACKAGE / "store" / module).read_text())
    return {
        node.name
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and any(getattr(b, "id", "") == "SqlQueries" for b in cls.bases)
        for node in cls.body
        if isinstance(node, ast.FunctionDef) and not extends(node)
    }


@pytest.mark.parametrize("module", ["sqlite.py", "postgres.py"])
def test_a_query_both_stores_share_is_built_once(module):
    """A query SqlQueries builds over the dialect is not written again in a backend
    (list_jobs' filters, next_child, get_counts, child_events, subtree, ...)."""
    from jobctl.store.base import SqlQueries

    shared = {name for name, value in vars(SqlQueries).items() if callable(value)}
    assert {"list_jobs_query", "next_child", "get_counts", "child_events", "subtree", "alive_at"} <= shared
    assert backend_methods(module) & shared <= DIALECT_HOOKS
