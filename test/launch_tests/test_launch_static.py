"""Launch files are checked statically here (no `launch` on these machines): every executable
they start is installed, every params file exists, and every parameter they or the shipped
params file set is declared by the node that receives it. Where launch_testing exists (a
real ROS 2 install), the launch descriptions are also built for real."""

import ast
import re
from pathlib import Path

import pytest

from anyloc_ros.core.config.params import NODE_PARAMETERS, node_specs

from ..conftest import REPO

DECLARED = {node: {p.name for p in node_specs(node)} for node in NODE_PARAMETERS}
DECLARED["anyloc_pipeline"] = set().union(*DECLARED.values())  # the pipeline process hosts all three
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))


def installed_executables() -> set[str]:
    """bin/ is the one list: CMake installs every file there for `ros2 run`, setup.py makes each a
    console script of the module it runs."""
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r'file\(GLOB ANYLOC_EXECUTABLES LIST_DIRECTORIES false "\$\{CMAKE_CURRENT_SOURCE_DIR\}/bin/\*"\)',
                     cmake) and "install(PROGRAMS ${ANYLOC_EXECUTABLES} DESTINATION lib/${PROJECT_NAME})" in cmake
    names = {p.name for p in (REPO / "bin").iterdir()}
    for n in names:
        module = re.search(r"^from (\S+) import main$", (REPO / "bin" / n).read_text(), re.M)
        assert module and (REPO / (module.group(1).replace(".", "/") + ".py")).is_file(), n
    return names


def launch_nodes(path: Path) -> list[dict]:
    """Node(...) calls of a launch file (or of its `node(...)` helper): executable and the
    parameter keys set by dicts (`{**overrides, "mode": ...}` expanded) or `-p`."""
    tree = ast.parse(path.read_text())
    assigned = {t.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}

    def dict_keys(d: ast.Dict) -> set[str]:
        keys = set()
        for k, v in zip(d.keys, d.values, strict=True):
            if k is None and isinstance(v, ast.Name) and isinstance(assigned.get(v.id), ast.Dict):
                keys |= dict_keys(assigned[v.id])
            elif isinstance(k, ast.Constant):
                keys.add(k.value)
        return keys

    nodes = []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") in ("Node", "node")):
            continue
        kw = {k.arg: k.value for k in call.keywords}
        if "executable" not in kw:
            continue  # the helper's own Node(package=..., **kw)
        keys: set[str] = set()
        for item in getattr(kw.get("parameters"), "elts", []):
            item = assigned.get(item.id, item) if isinstance(item, ast.Name) else item
            if isinstance(item, ast.Dict):
                keys |= dict_keys(item)
        ros_args = getattr(kw.get("ros_arguments"), "elts", [])
        for a, b in zip(ros_args, ros_args[1:], strict=False):
            if isinstance(a, ast.Constant) and a.value == "-p":
                first = b.elts[0] if isinstance(b, ast.List) else b
                keys.add(first.value.split(":=")[0])
        package = kw["package"].value if "package" in kw else "anyloc_ros"
        nodes.append({"package": package, "executable": kw["executable"].value, "params": keys})
    return nodes


def test_launch_files_exist_and_parse():
    names = {p.name for p in LAUNCH_FILES}
    assert names == {"anyloc.launch.py"}  # one launch file: the modes are its `mode` argument
    for p in LAUNCH_FILES:
        compile(p.read_text(), str(p), "exec")
        for include in re.findall(r'"launch", "([^"]+\.launch\.py)"', p.read_text()):
            assert (REPO / "launch" / include).is_file()


def test_launch_executables_are_installed_and_parameters_declared():
    exes = installed_executables()
    nodes = launch_nodes(REPO / "launch" / "anyloc.launch.py")
    assert {n["executable"] for n in nodes} == {"encoder_node", "mapping_node", "recognition_node", "anyloc_pipeline"}
    for n in nodes:
        assert n["package"] == "anyloc_ros" and n["executable"] in exes
        undeclared = n["params"] - DECLARED[n["executable"]]
        assert not undeclared, f"{n['executable']}: launch sets undeclared parameters {undeclared}"
    default = re.search(r'"params_file",\s*default_value=PathJoinSubstitution\(\[FindPackageShare\("anyloc_ros"\), '
                        r'"config",\s*"([^"]+)"\]\)', (REPO / "launch" / "anyloc.launch.py").read_text())
    assert default and (REPO / "config" / default.group(1)).is_file()


def test_launch_testing_descriptions_build_where_available():
    pytest.importorskip("launch_testing", reason="launch_testing is not installable here; runs on a ROS 2 install")
    import importlib.util

    for p in LAUNCH_FILES:
        spec = importlib.util.spec_from_file_location(p.stem.replace(".", "_"), p)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert mod.generate_launch_description().entities
