"""Dependencies point one way: every import of a project module (lazy ones inside functions too) is read
from the source, and the package layers and the absence of cycles are checked on that graph."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "schemas",
    "telemetry",
    "transforms",
    "beam_pipelines",
    "kafkaio",
    "ingestion",
    "schema_registry",
    "monitoring",
    "runners",
)

#: package -> the other project packages it may import. Lower layers never import upper ones.
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "telemetry": set(),  # prometheus-client only: the workers' metrics, counted by transforms and the Kafka IO
    "schema_registry": {"schemas"},  # schemas.endpoints only (its default ports)
    "transforms": {"schemas", "telemetry"},
    "kafkaio": {"schemas", "telemetry"},
    "beam_pipelines": {"schemas", "transforms"},
    "ingestion": {"schemas", "telemetry", "kafkaio"},  # file_sd of its /metrics; the recovering producer
    "monitoring": {"schemas", "ingestion"},  # the lag exporter shares ingestion's consumer-lag reader
    "runners": {
        "schemas",
        "telemetry",
        "transforms",
        "beam_pipelines",
        "kafkaio",
        "ingestion",
        "schema_registry",
        "monitoring",
    },
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Project modules ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PACKAGES)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {
        _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py") if path.is_file()
    }
    # "from pkg import name" names a module only when pkg.name is one; otherwise it is pkg itself.
    return {name: {i for i in _imports(path) if i in modules} - {name} for name, path in modules.items()}


GRAPH = _graph()


def test_the_graph_sees_the_project():
    assert len(GRAPH) > 40
    assert "schemas.records" in GRAPH["transforms.decode"]


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_lower_layers(package):
    upward = {
        (module, target)
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] not in ALLOWED[package] | {package}
    }
    assert not upward, f"{package} may import only {sorted(ALLOWED[package])}: {sorted(upward)}"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
