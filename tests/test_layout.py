"""The project's shape: what installs under which name, and which way imports may point."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOTS = {
    "paxq.broker": "broker",
    "paxq.client": "client",
    "paxq.storage": "storage",
    "paxq.ops": "ops",
}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_and_installed_under_paxq() -> None:
    tool = pyproject()["tool"]["setuptools"]
    assert tool["package-dir"] == ROOTS
    found = set()
    for name, folder in ROOTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *relative)))
    assert set(tool["packages"]) == found


def _imports(folder: str) -> list[tuple[Path, str]]:
    """(file, imported module) for every import in a folder, relative ones made absolute."""
    out = []
    for path in (ROOT / folder).rglob("*.py"):
        package = "paxq." + ".".join(path.parent.relative_to(ROOT).parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out += [(path, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                out.append((path, module))
    return out


#: what a sans-IO module never imports: no event loop, sockets, clocks, threads or files
NO_IO = ("trio", "anyio", "socket", "time", "datetime", "asyncio", "os", "threading", "selectors")


def test_the_paxos_core_is_sans_io() -> None:
    forbidden = (
        *NO_IO,
        "paxq.storage",
        "paxq.broker.machine",
        "paxq.broker.node",
        "paxq.broker.sim",
    )
    _imports_none_of("broker/paxos", forbidden)


def _imports_none_of(folder: str, forbidden: tuple[str, ...]) -> None:
    for path, module in _imports(folder):
        assert not any(module == f or module.startswith(f + ".") for f in forbidden), (
            f"{path.name} imports {module}"
        )


def test_the_client_never_imports_the_broker() -> None:
    for path, module in _imports("client"):
        assert not module.startswith("paxq.broker"), f"{path} imports {module}"


def test_storage_imports_neither_broker_nor_ops() -> None:
    for path, module in _imports("storage"):
        assert not module.startswith(("paxq.broker", "paxq.ops")), f"{path} imports {module}"


def test_the_machine_imports_neither_paxos_nor_node_nor_io() -> None:
    forbidden = (
        "paxq.broker.paxos",
        "paxq.broker.node",
        "paxq.broker.sim",
        "trio",
        "time",
        "socket",
    )
    for path, module in _imports("broker/machine"):
        assert not any(module == f or module.startswith(f + ".") for f in forbidden), (
            f"{path.name} imports {module}"
        )


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and not node.name.startswith("__")
    }


def test_the_node_core_is_sans_io() -> None:
    forbidden = (
        *NO_IO,
        "paxq.storage.rocks",
        "paxq.broker.node.runtime",
        "paxq.broker.node.peers",
        "paxq.broker.sim",
    )
    for path, module in _imports("broker/node"):
        if path.name == "core.py":
            assert not any(module == f or module.startswith(f + ".") for f in forbidden), (
                f"core.py imports {module}"
            )


def test_one_implementation_of_the_per_turn_logic() -> None:
    """The simulator and the trio runtime drive the node core; neither grows its own copy."""
    core = _defined(ROOT / "broker/node/core.py")
    assert {"step", "tick", "command", "persisted", "take"} <= core
    sim_imports = {module for _, module in _imports("broker/sim")}
    assert "paxq.broker.node.core" in sim_imports, "the simulator drives the node core"
    drivers = [*(ROOT / "broker/sim").glob("*.py"), ROOT / "broker/node/runtime.py"]
    for path in drivers:
        copied = _defined(path) & core
        assert not copied, f"{path.relative_to(ROOT)} defines the core's {sorted(copied)}"
