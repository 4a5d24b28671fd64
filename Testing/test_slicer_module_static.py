"""The Slicer module checked without Slicer: its .ui file, its imports, its resources, its CMake metadata.

The module file cannot be imported outside Slicer (qt, ctk and the app are missing), so it is read
with `ast`: every widget the code uses must exist in the .ui file with the class its name
promises, every parameter bound in the .ui must exist in the parameter node, and the module must
import nothing heavy at import time (the library, torch, numpy and SimpleITK only inside functions).
"""

from __future__ import annotations

import ast
import re
import tomllib
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "H3DELandmarks" / "H3DELandmarks.py"
UI_FILE = REPO / "Resources" / "UI" / "H3DELandmarks.ui"
ICON = REPO / "Resources" / "Icons" / "H3DELandmarks.png"
# Widget name suffix -> the class such a widget must have (longest suffix first wins).
CLASS_BY_SUFFIX = {
    "CollapsibleButton": "ctkCollapsibleButton",
    "SliderWidget": "ctkSliderWidget",
    "Selector": "qMRMLNodeComboBox",
    "ComboBox": "QComboBox",
    "CheckBox": "QCheckBox",
    "Button": "QPushButton",
    "ProgressBar": "QProgressBar",
    "Label": "QLabel",
    "Table": "QTableWidget",
}
LIGHT_TOP_LEVEL_IMPORTS = {
    "contextlib", "importlib.util", "logging", "math", "os", "sys", "tempfile", "typing",
    "qt", "ctk", "vtk", "slicer", "slicer.i18n", "slicer.parameterNodeWrapper",
    "slicer.ScriptedLoadableModule", "slicer.util",
}
HEAVY = ("H3DELandmarksLib", "torch", "numpy", "SimpleITK", "safetensors", "requests", "scipy")
EXTENSION_FIELDS = ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS")


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(MODULE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ui_widgets() -> dict[str, ElementTree.Element]:
    return {widget.get("name"): widget for widget in ElementTree.parse(UI_FILE).iter("widget")}


def used_ui_widgets(tree: ast.Module) -> set[str]:
    """Names X of every ``self.ui.X`` in the module."""
    return {
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
    }


def expected_class(name: str) -> str:
    suffix = max((suffix for suffix in CLASS_BY_SUFFIX if name.endswith(suffix)), key=len, default=None)
    assert suffix is not None, f"widget {name} has no name suffix that says its class"
    return CLASS_BY_SUFFIX[suffix]


def test_every_widget_the_module_uses_exists_with_the_expected_class(tree, ui_widgets):
    used = used_ui_widgets(tree)
    assert {"detectButton", "landmarksTable", "modelComboBox", "detectionProgressBar"} <= used
    for name in sorted(used):
        assert name in ui_widgets, f"self.ui.{name} is not in {UI_FILE.name}"
        assert ui_widgets[name].get("class") == expected_class(name), name


def test_every_named_widget_of_the_ui_follows_the_naming_rule(ui_widgets):
    for name, widget in ui_widgets.items():
        if name != "H3DELandmarks":
            assert widget.get("class") == expected_class(name), name


def parameter_fields(tree: ast.Module) -> dict[str, str]:
    """Field name -> annotation source of the class decorated with @parameterNodeWrapper."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list):
            return {item.target.id: ast.unparse(item.annotation)
                    for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in the module")


def test_widgets_bound_to_parameters_match_the_parameter_node(tree, ui_widgets):
    fields = parameter_fields(tree)
    bound = {}
    for name, widget in ui_widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert set(bound) <= set(fields)
    assert bound == {
        "inputVolume": "qMRMLNodeComboBox",
        "device": "QComboBox",
        "confidenceThreshold": "ctkSliderWidget",
        "updateUntouchedOnly": "QCheckBox",
        "landmarks": "qMRMLNodeComboBox",
    }
    assert "Choice" in fields["device"] and "WithinRange" in fields["confidenceThreshold"]
    assert fields["inputVolume"] == "vtkMRMLScalarVolumeNode" and fields["landmarks"] == "vtkMRMLMarkupsFiducialNode"


def test_node_selectors_are_connected_to_the_scene(ui_widgets):
    connections = ElementTree.parse(UI_FILE).getroot().find("connections")
    receivers = {c.findtext("receiver") for c in connections if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    selectors = {name for name, widget in ui_widgets.items() if widget.get("class") == "qMRMLNodeComboBox"}
    assert selectors and selectors == receivers


def imported_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return []


def test_module_imports_only_light_modules_at_import_time(tree):
    top_level = [name for statement in tree.body for name in imported_modules(statement)]
    assert set(top_level) <= LIGHT_TOP_LEVEL_IMPORTS, set(top_level) - LIGHT_TOP_LEVEL_IMPORTS
    lazy = [name for node in ast.walk(tree) for name in imported_modules(node) if name not in top_level]
    assert any(name.startswith("H3DELandmarksLib.mrml") for name in lazy), "the library must be imported lazily"
    for statement in tree.body:
        if isinstance(statement, (ast.If, ast.Try, ast.With, ast.Assign, ast.Expr)):
            nested = [name for node in ast.walk(statement) for name in imported_modules(node)]
            assert not [name for name in nested if name.startswith(HEAVY)], ast.unparse(statement)[:80]


def test_library_is_imported_lazily_inside_functions_only(tree):
    for node in ast.walk(tree):
        for name in imported_modules(node):
            if name.startswith(HEAVY):
                assert node not in tree.body, name


def test_resources_exist_and_the_icon_is_128_pixels_square():
    assert UI_FILE.is_file()
    header = ICON.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(header[16:20], "big") == int.from_bytes(header[20:24], "big") == 128


def test_extension_metadata_is_complete():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for field in EXTENSION_FIELDS:
        match = re.search(rf'set\(EXTENSION_{field} "([^"]+)"\)', text)
        assert match and match.group(1).strip(), field
    for url_field in ("HOMEPAGE", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{url_field} "https://', text), url_field
    assert re.search(r'set\(EXTENSION_ICONURL "[^"]+/Resources/Icons/H3DELandmarks\.png"\)', text)
    assert "add_subdirectory(H3DELandmarks)" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text


def test_module_build_installs_the_library_and_registers_the_self_test():
    module_cmake = (REPO / "H3DELandmarks" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in module_cmake and "H3DELandmarksLib/*.py" in module_cmake
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui", "Resources/Models/*"):
        assert resource in module_cmake, resource
    testing = (REPO / "H3DELandmarks" / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest(SCRIPT" in testing and "H3DELandmarks.py" in testing


def test_self_test_and_its_command_are_in_the_module(tree):
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    bases = {ast.unparse(base) for base in classes["H3DELandmarksTest"].bases}
    assert bases == {"ScriptedLoadableModuleTest"}
    methods = {item.name for item in classes["H3DELandmarksTest"].body if isinstance(item, ast.FunctionDef)}
    assert {"runTest", "setUp", "test_H3DELandmarks_workflow"} <= methods
    assert "slicer.testing.runUnitTest" in ast.get_docstring(tree)


def test_module_installs_every_dependency_of_the_library(tree):
    constants = {target.id: statement.value for statement in tree.body if isinstance(statement, ast.Assign)
                 for target in statement.targets if isinstance(target, ast.Name)}
    offered = {ast.literal_eval(constants["TORCH_REQUIREMENT"])}
    offered |= {requirement for requirement, _ in ast.literal_eval(constants["REQUIREMENTS"])}
    with open(REPO / "pyproject.toml", "rb") as stream:
        needed = set(tomllib.load(stream)["project"]["dependencies"])
    assert needed == offered
