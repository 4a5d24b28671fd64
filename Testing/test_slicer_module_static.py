"""The Slicer module checked without Slicer: its .ui file, its imports, its resources, its CMake metadata.

The module's files cannot be imported outside Slicer (qt, ctk and the app are missing), so they
are read with `ast`: every widget the panel uses must exist in the .ui file with the class its
name promises, every parameter bound in the .ui must exist in the parameter node, the module file
stays a thin shim, and nothing heavy is imported at import time (the library, torch, numpy and
SimpleITK only inside functions; the requirement checker, which needs only `packaging`, excepted).
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
GUI = REPO / "H3DELandmarks" / "H3DELandmarksGUI"
WIDGET = GUI / "widget.py"
PARAMETERS = GUI / "parameters.py"
SELF_TESTS = REPO / "H3DELandmarks" / "Testing"
MODULE_MAX_LINES = 300
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
    "contextlib", "importlib", "logging", "os", "sys", "typing", "unittest",
    "qt", "vtk", "slicer", "slicer.i18n", "slicer.parameterNodeWrapper",
    "slicer.ScriptedLoadableModule", "slicer.util",
    "H3DELandmarksGUI.resources", "H3DELandmarksGUI.parameters", "resources",
    "H3DELandmarksLib.requirements",
}
HEAVY = ("H3DELandmarksLib", "torch", "numpy", "SimpleITK", "safetensors", "requests", "scipy")
LIGHT_LIBRARY_MODULE = "H3DELandmarksLib.requirements"
EXTENSION_FIELDS = ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS")


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(MODULE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def widget_tree() -> ast.Module:
    return ast.parse(WIDGET.read_text(encoding="utf-8"))


def gui_files() -> list[Path]:
    return [MODULE, *sorted(GUI.glob("*.py"))]


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


def test_every_widget_the_panel_uses_exists_with_the_expected_class(widget_tree, ui_widgets):
    used = used_ui_widgets(widget_tree)
    assert {"detectButton", "trainButton", "nextFlaggedButton", "reviewCountsLabel", "landmarksTable",
            "modelComboBox", "detectionProgressBar", "inputVolumeSelector"} <= used
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


def test_widgets_bound_to_parameters_match_the_parameter_node(ui_widgets):
    fields = parameter_fields(ast.parse(PARAMETERS.read_text(encoding="utf-8")))
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
        "errorThreshold": "ctkSliderWidget",
        "updateUntouchedOnly": "QCheckBox",
        "landmarks": "qMRMLNodeComboBox",
    }
    assert "Choice" in fields["device"] and "WithinRange" in fields["confidenceThreshold"]
    assert "WithinRange" in fields["errorThreshold"]
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


@pytest.mark.parametrize("path", gui_files(), ids=lambda path: path.name)
def test_module_files_import_only_light_modules_at_import_time(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = [name for statement in tree.body for name in imported_modules(statement)]
    assert set(top_level) <= LIGHT_TOP_LEVEL_IMPORTS, set(top_level) - LIGHT_TOP_LEVEL_IMPORTS
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
            continue
        heavy = {name for node in ast.walk(statement) for name in imported_modules(node) if name.startswith(HEAVY)}
        assert heavy <= {LIGHT_LIBRARY_MODULE}, ast.unparse(statement)[:80]


def test_the_panel_imports_the_library_lazily(widget_tree):
    lazy = [name for node in ast.walk(widget_tree) for name in imported_modules(node)]
    assert any(name.startswith("H3DELandmarksLib.mrml") for name in lazy), "the library must be imported lazily"


def test_the_requirement_checker_needs_only_the_standard_library_and_packaging():
    path = REPO / "H3DELandmarksLib" / "requirements.py"
    names = {name.split(".")[0] for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             for name in imported_modules(node)}
    assert names <= {"__future__", "importlib", "dataclasses", "pathlib", "packaging"}, names


def test_the_module_file_is_a_thin_shim(tree):
    assert len(MODULE.read_text(encoding="utf-8").splitlines()) <= MODULE_MAX_LINES
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes == {"H3DELandmarks", "H3DELandmarksWidget", "H3DELandmarksLogic", "H3DELandmarksTest"}
    panel = {node.name for node in ast.parse(WIDGET.read_text(encoding="utf-8")).body if isinstance(node, ast.ClassDef)}
    assert panel == {"H3DELandmarksPanel"}


def test_the_panel_takes_its_logic_installer_and_job_starter_as_arguments(widget_tree):
    panel = next(node for node in widget_tree.body if isinstance(node, ast.ClassDef))
    init = next(item for item in panel.body if isinstance(item, ast.FunctionDef) and item.name == "__init__")
    assert [argument.arg for argument in init.args.args] == ["self", "logic", "installer", "jobs", "parent"]


def test_panel_constants_match_the_library():
    pytest.importorskip("slicer")
    from H3DELandmarksLib.device import DEVICES
    from H3DELandmarksLib.mrml.review import DEFAULT_ERROR_THRESHOLD_MM

    constants = {target.id: ast.literal_eval(statement.value)
                 for statement in ast.parse(PARAMETERS.read_text(encoding="utf-8")).body
                 if isinstance(statement, ast.Assign) for target in statement.targets}
    assert set(constants["DEVICES"]) == set(DEVICES)
    assert constants["DEFAULT_ERROR_THRESHOLD_MM"] == DEFAULT_ERROR_THRESHOLD_MM


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


def test_module_build_installs_the_library_the_panel_and_the_self_test():
    module_cmake = (REPO / "H3DELandmarks" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in module_cmake and "H3DELandmarksLib/*.py" in module_cmake
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui", "Resources/Models/*",
                     "H3DELandmarksLib/*.txt"):
        assert resource in module_cmake, resource
    listed = set(re.findall(r"^\s+((?:H3DELandmarksGUI|Testing)/\S+\.py)$", module_cmake, re.MULTILINE))
    present = {path.relative_to(REPO / "H3DELandmarks").as_posix()
               for path in [*GUI.glob("*.py"), *SELF_TESTS.glob("*.py")]}
    assert listed == present
    testing = (REPO / "H3DELandmarks" / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest(SCRIPT" in testing and "H3DELandmarks.py" in testing


def test_self_test_runs_the_test_cases_of_the_testing_folder(tree):
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    bases = {ast.unparse(base) for base in classes["H3DELandmarksTest"].bases}
    assert bases == {"ScriptedLoadableModuleTest"}
    methods = {item.name for item in classes["H3DELandmarksTest"].body if isinstance(item, ast.FunctionDef)}
    assert {"runTest", "setUp", "test_H3DELandmarks"} <= methods
    assert "slicer.testing.runUnitTest" in ast.get_docstring(tree)
    assert list(SELF_TESTS.glob("*TestCase.py")), "no self-test case in H3DELandmarks/Testing"


def test_one_requirement_list_for_the_package_and_the_module():
    with open(REPO / "pyproject.toml", "rb") as stream:
        project = tomllib.load(stream)
    assert "dependencies" not in project["project"] and "dependencies" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["H3DELandmarksLib/requirements.txt"]}
    assert "requirements.txt" in project["tool"]["setuptools"]["package-data"]["*"]


@pytest.mark.parametrize("path", [*gui_files(), *sorted(SELF_TESTS.glob("*.py"))], ids=lambda path: path.name)
def test_every_library_name_the_module_imports_exists(path):
    """The lazy imports run only inside Slicer: a renamed or moved library name must fail here."""
    pytest.importorskip("slicer")
    import importlib.util

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("H3DELandmarksLib"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{path.name}: {node.module} has no {alias.name}"
