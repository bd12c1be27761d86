"""The layer contract: no module of akvm imports one of a higher layer.

import-linter's layers contract cannot see this package: its folders map
into one import name (vmm/ is akvm, devices/ akvm.devices, iommu/
akvm.iommu), which grimp does not follow in a checkout. This test reads
every module's imports (function-level ones included) with ast instead.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {"akvm": ROOT / "vmm", "akvm.devices": ROOT / "devices", "akvm.iommu": ROOT / "iommu"}

# Top to bottom. A module may import its own layer's modules and any lower
# layer's; in an `independent` layer, no group imports another.
LAYERS = [
    (["akvm.__main__", "akvm.testing"], False),
    (["akvm.cli"], False),
    (["akvm.gdb"], False),
    (["akvm.machine", "akvm.builders", "akvm.devicetable", "akvm.config", "akvm.guest_kernel",
      "akvm.control", "akvm.snapshot"], False),
    (["akvm.boot"], False),
    (["akvm.devices", "akvm.iommu", "akvm.vcpu", "akvm.tables"], True),
    (["akvm.base"], False),
]


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "akvm" and parts and parts[0] in ("devices", "iommu"):
                continue
            found[name] = path
    return found


MODULES = modules()


def group_of(module: str) -> tuple[int, str] | None:
    """(layer index, group) of a module, or None for the akvm package itself."""
    best = None
    for index, (groups, _) in enumerate(LAYERS):
        for group in groups:
            if (module == group or module.startswith(group + ".")) and \
                    (best is None or len(group) > len(best[1])):
                best = (index, group)
    return best


def imports(path: pathlib.Path, module: str) -> set[str]:
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("akvm"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if not base.startswith("akvm"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in MODULES else base)
    return out


def test_every_module_has_a_layer():
    lost = [m for m in MODULES if m != "akvm" and group_of(m) is None]
    assert not lost, f"modules in no layer of LAYERS: {lost}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_upwards(module):
    mine = group_of(module)
    if mine is None:
        return
    for imported in imports(MODULES[module], module):
        theirs = group_of(imported)
        if theirs is None:
            continue
        assert theirs[0] >= mine[0], f"{module} ({mine[1]}) imports {imported}, a higher layer"
        if theirs[0] == mine[0] and LAYERS[mine[0]][1]:
            assert theirs[1] == mine[1], \
                f"{module} imports {imported}: {mine[1]} and {theirs[1]} are independent"
