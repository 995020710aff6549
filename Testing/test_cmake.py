"""Packaging of the Slicer extension, checked without Slicer.

Slicer installs only the files its CMake lists name, so a library or module file that is not listed is missing
from the installed extension, and a listed file that does not exist breaks the build. These tests parse both
CMakeLists.txt files and compare them with the files present, check the Extensions Index entry
(BreastSegmentation.json) against EXTENSION_DEPENDS and the catalog schema, and check that the module's .ui file
and its Python code name the same widgets and parameters.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
MODULE_DIR = REPOSITORY / "BreastSegmentation"
LIBRARY_DIR = REPOSITORY / "BreastSegmentationLib"
RESOURCES_DIR = REPOSITORY / "Resources"
EXTENSION_NAME = "BreastSegmentation"

#: Keys allowed by slicer-extension-catalog-entry-schema-v1.0.2.json ("additionalProperties": false).
CATALOG_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
REQUIRED_CATALOG_KEYS = {"$schema", "category", "scm_url", "scm_revision", "build_dependencies", "tier"}
EXTENSION_VARIABLES = ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                       "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS")


# --- a small CMake reader: commands, set() variables, slicerMacroBuildScriptedModule blocks --------------------


@dataclass(frozen=True)
class Command:
    name: str
    arguments: tuple[str, ...]
    quoted: tuple[bool, ...]


_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s()"#]+)|(\()|(\))|(#[^\n]*)', re.DOTALL)
_COMMAND_START = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def parse_commands(text: str) -> list[Command]:
    """The commands of a CMake file with their raw arguments (comments dropped, quotes removed, parens kept)."""
    commands, position = [], 0
    while True:
        comment_or_start = re.compile(r"#[^\n]*|" + _COMMAND_START.pattern).search(text, position)
        if comment_or_start is None:
            return commands
        if comment_or_start.group(0).startswith("#"):
            position = comment_or_start.end()
            continue
        arguments, quoted, depth, position = [], [], 1, comment_or_start.end()
        while depth:
            token = _TOKEN.search(text, position)
            if token is None:
                raise ValueError(f"unbalanced parentheses after {comment_or_start.group(1)}(")
            position = token.end()
            string, word, opening, closing, _comment = token.groups()
            if opening or closing:
                depth += 1 if opening else -1
                if depth:
                    arguments.append(opening or closing)
                    quoted.append(False)
            elif string is not None or word is not None:
                arguments.append(string if string is not None else word)
                quoted.append(string is not None)
        commands.append(Command(comment_or_start.group(1), tuple(arguments), tuple(quoted)))


def expand(commands: list[Command]) -> tuple[list[Command], dict[str, list[str]]]:
    """Commands with ``${VAR}`` replaced by the values of earlier ``set(VAR ...)`` (a list splits an unquoted
    argument into several), and the variables."""
    variables: dict[str, list[str]] = {}
    expanded = []
    for command in commands:
        arguments = []
        for argument, quoted in zip(command.arguments, command.quoted):
            whole = re.fullmatch(r"\$\{(\w+)\}", argument)
            if whole and not quoted and whole.group(1) in variables:
                arguments.extend(variables[whole.group(1)])
            else:
                arguments.append(re.sub(r"\$\{(\w+)\}",
                                        lambda m: ";".join(variables.get(m.group(1), [m.group(0)])), argument))
        command = Command(command.name, tuple(arguments), command.quoted)
        if command.name.lower() == "set" and arguments:
            variables[arguments[0]] = list(arguments[1:])
        expanded.append(command)
    return expanded, variables


def read_cmake(path: Path) -> tuple[list[Command], dict[str, list[str]]]:
    return expand(parse_commands(path.read_text(encoding="utf-8")))


KEYWORDS = {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE"}


def scripted_module(commands: list[Command], name: str) -> dict[str, list[str]]:
    """The keyword arguments of the ``slicerMacroBuildScriptedModule(NAME name ...)`` call."""
    for command in commands:
        if command.name == "slicerMacroBuildScriptedModule":
            blocks: dict[str, list[str]] = {}
            keyword = None
            for argument in command.arguments:
                if argument in KEYWORDS:
                    keyword = argument
                    blocks.setdefault(keyword, [])
                else:
                    blocks[keyword].append(argument)
            if blocks.get("NAME") == [name]:
                return blocks
    raise AssertionError(f"no slicerMacroBuildScriptedModule(NAME {name} ...)")


def files_under(folder: Path, suffix: str | None = None) -> set[str]:
    """Files below ``folder`` (relative POSIX paths), without caches and hidden files."""
    if not folder.is_dir():
        return set()
    return {
        path.relative_to(folder).as_posix() for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and not any(p.startswith(".") for p in path.parts)
        and (suffix is None or path.suffix == suffix)
    }


@pytest.fixture(scope="module")
def root() -> tuple[list[Command], dict[str, list[str]]]:
    return read_cmake(REPOSITORY / "CMakeLists.txt")


@pytest.fixture(scope="module")
def module() -> tuple[list[Command], dict[str, list[str]]]:
    return read_cmake(MODULE_DIR / "CMakeLists.txt")


@pytest.fixture(scope="module")
def catalog_entry() -> dict:
    return json.loads((REPOSITORY / f"{EXTENSION_NAME}.json").read_text(encoding="utf-8"))


def test_the_reader_handles_comments_quotes_lists_and_nested_parentheses():
    commands, variables = expand(parse_commands(
        '# a comment with set(IGNORED x)\n'
        'set(NAME Demo)\n'
        'set(FILES\n  ${NAME}.py  # trailing comment\n  "Resources/a b.png"\n  )\n'
        'slicerMacroBuildScriptedModule(NAME ${NAME} SCRIPTS ${FILES} WITH_GENERIC_TESTS)\n'
        'if(BUILD_TESTING AND (WIN32 OR UNIX))\nendif()\n'
    ))
    assert variables == {"NAME": ["Demo"], "FILES": ["Demo.py", "Resources/a b.png"]}
    assert scripted_module(commands, "Demo") == {"NAME": ["Demo"], "SCRIPTS": ["Demo.py", "Resources/a b.png"],
                                                 "WITH_GENERIC_TESTS": []}
    assert [c.name for c in commands] == ["set", "set", "slicerMacroBuildScriptedModule", "if", "endif"]
    assert commands[3].arguments == ("BUILD_TESTING", "AND", "(", "WIN32", "OR", "UNIX", ")")


# --- the top-level CMakeLists.txt ------------------------------------------------------------------------------


def test_root_follows_the_extension_template(root):
    commands, variables = root
    names = [command.name for command in commands]
    assert names[0] == "cmake_minimum_required"
    assert (names[1], commands[1].arguments) == ("project", (EXTENSION_NAME,))
    assert not EXTENSION_NAME.lower().startswith("slicer")
    find_slicer = names.index("find_package")
    assert commands[find_slicer].arguments == ("Slicer", "REQUIRED")
    assert commands[find_slicer + 1].arguments == ("${Slicer_USE_FILE}",)
    assert find_slicer < names.index("add_subdirectory")
    assert [command.arguments for command in commands[-2:]] == [("${Slicer_EXTENSION_GENERATE_CONFIG}",),
                                                               ("${Slicer_EXTENSION_CPACK}",)]
    for variable in EXTENSION_VARIABLES:
        assert variables.get(variable) and all(variables[variable]), f"{variable} is not set"


def test_add_subdirectory_folders_exist(root):
    commands, _ = root
    folders = [command.arguments[0] for command in commands if command.name == "add_subdirectory"]
    assert folders == [EXTENSION_NAME]
    assert all((REPOSITORY / folder / "CMakeLists.txt").is_file() for folder in folders)


def raw_github_path(url: str) -> tuple[str, str, str, str]:
    """owner, repository, revision and file path of a raw.githubusercontent.com URL."""
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.netloc == "raw.githubusercontent.com", url
    owner, repository, revision, path = parts.path.lstrip("/").split("/", 3)
    return owner, repository, revision, path


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return struct.unpack(">II", header[16:24])


def test_icon_and_screenshots_are_files_of_this_repository(root, catalog_entry):
    _, variables = root
    repository_url = urlsplit(catalog_entry["scm_url"]).path.strip("/")
    urls = [*variables["EXTENSION_ICONURL"], *" ".join(variables["EXTENSION_SCREENSHOTURLS"]).split()]
    for url in urls:
        owner, repository, revision, path = raw_github_path(url)
        assert f"{owner}/{repository}" == repository_url and revision == catalog_entry["scm_revision"], url
        assert (REPOSITORY / path).is_file(), f"{url} names {path}, which is not in the repository"
        png_size(REPOSITORY / path)
    icon_path = raw_github_path(variables["EXTENSION_ICONURL"][0])[3]
    assert icon_path == f"{EXTENSION_NAME}/Resources/Icons/{EXTENSION_NAME}.png"
    assert png_size(REPOSITORY / icon_path) == (128, 128)
    assert variables["EXTENSION_HOMEPAGE"] == [catalog_entry["scm_url"]]


def test_every_library_file_is_listed_and_every_listed_file_exists(root):
    commands, _ = root
    library = scripted_module(commands, "BreastSegmentationLib")
    assert "WITH_SUBDIR" not in library, "paths must stay relative to the repository root to keep the package folder"
    scripts, resources = library["SCRIPTS"], library.get("RESOURCES", [])
    for listed in (scripts, resources):
        assert len(listed) == len(set(listed)), "a file is listed twice"
        missing = [path for path in listed if not (REPOSITORY / path).is_file()]
        assert not missing, f"listed in CMakeLists.txt but not in the repository: {missing}"
    present = {f"BreastSegmentationLib/{path}" for path in files_under(LIBRARY_DIR, ".py")}
    assert present - set(scripts) == set(), "add these library files to LIBRARY_PYTHON_SCRIPTS in CMakeLists.txt"
    assert set(scripts) <= present, "LIBRARY_PYTHON_SCRIPTS must list only the library's .py files"
    bundled = {f"Resources/{path}" for path in files_under(RESOURCES_DIR)}
    assert bundled - set(resources) == set(), "add these files to LIBRARY_PYTHON_RESOURCES in CMakeLists.txt"
    assert set(resources) <= bundled, "LIBRARY_PYTHON_RESOURCES must list only files under Resources/"


# --- the module's CMakeLists.txt -------------------------------------------------------------------------------


def test_every_module_file_is_listed_and_every_listed_file_exists(module):
    commands, _ = module
    blocks = scripted_module(commands, EXTENSION_NAME)
    assert "WITH_GENERIC_TESTS" in blocks
    scripts, resources = blocks["SCRIPTS"], blocks["RESOURCES"]
    listed = scripts + resources
    assert len(listed) == len(set(listed)), "a file is listed twice"
    missing = [path for path in listed if not (MODULE_DIR / path).is_file()]
    assert not missing, f"listed in {EXTENSION_NAME}/CMakeLists.txt but not present: {missing}"
    assert scripts == [f"{EXTENSION_NAME}.py"]
    present = {path for path in files_under(MODULE_DIR) if path != "CMakeLists.txt"}
    assert present - set(listed) == set(), f"add these files to {EXTENSION_NAME}/CMakeLists.txt"


def test_module_tests_are_registered(module):
    commands, _ = module
    names = [command.name for command in commands]
    start = names.index("if")
    assert commands[start].arguments == ("BUILD_TESTING",)
    inside = commands[start:names.index("endif")]
    unittests = [c.arguments for c in inside if c.name == "slicer_add_python_unittest"]
    assert unittests == [("SCRIPT", f"{EXTENSION_NAME}.py")]
    (batch_test,) = [c.arguments for c in inside if c.name == "slicer_add_python_test"]
    assert batch_test[batch_test.index("SCRIPT") + 1] == "Scripts/batch.py"
    assert "--no-main-window" in batch_test
    assert batch_test[batch_test.index("--input-dir") + 1] == "${CMAKE_SOURCE_DIR}/Resources/Sample"


def test_the_bundled_sample_the_tests_run_on_exists():
    """The module's self-test and the batch ctest segment Resources/Sample/{pre,post}.nii.gz."""
    assert (RESOURCES_DIR / "Sample" / "pre.nii.gz").is_file() and (RESOURCES_DIR / "Sample" / "post.nii.gz").is_file()


# --- the Extensions Index entry and the licence ----------------------------------------------------------------


def test_catalog_entry_has_lf_endings_and_the_schema_keys(catalog_entry):
    raw = (REPOSITORY / f"{EXTENSION_NAME}.json").read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    assert REQUIRED_CATALOG_KEYS <= set(catalog_entry) <= CATALOG_KEYS
    assert catalog_entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/")
    assert catalog_entry["category"] == "Segmentation"
    assert isinstance(catalog_entry["tier"], int) and 1 <= catalog_entry["tier"] <= 5
    scm = urlsplit(catalog_entry["scm_url"])
    assert scm.scheme == "https" and scm.netloc == "github.com"
    assert scm.path.strip("/").split("/")[-1].startswith("Slicer"), "the repository name should start with Slicer"


def test_build_dependencies_match_extension_depends(root, catalog_entry):
    _, variables = root
    depends = [name for value in variables["EXTENSION_DEPENDS"] for name in value.split(";") if name != "NA"]
    assert catalog_entry["build_dependencies"] == depends == ["PyTorch"]


def test_licence_at_the_root():
    assert "Apache License" in (REPOSITORY / "LICENSE").read_text(encoding="utf-8")


# --- the module's .ui file against its Python code -------------------------------------------------------------


def ui_widgets() -> dict[str, ElementTree.Element]:
    tree = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / f"{EXTENSION_NAME}.ui")
    return {widget.get("name"): widget for widget in tree.iter("widget")}


def module_source() -> ast.Module:
    return ast.parse((MODULE_DIR / f"{EXTENSION_NAME}.py").read_text(encoding="utf-8"))


def test_ui_parameter_names_are_parameters_of_the_parameter_node():
    parameter_class = next(node for node in ast.walk(module_source())
                           if isinstance(node, ast.ClassDef) and node.name == f"{EXTENSION_NAME}ParameterNode")
    parameters = {statement.target.id for statement in parameter_class.body if isinstance(statement, ast.AnnAssign)}
    connected = {prop.findtext("string") for widget in ui_widgets().values() for prop in widget.findall("property")
                 if prop.get("name") == "SlicerParameterName"}
    assert connected and connected <= parameters, f"unknown parameters in the .ui file: {connected - parameters}"


def test_widgets_used_by_the_module_exist_in_the_ui_file():
    used = {node.attr for node in ast.walk(module_source())
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    widgets = ui_widgets()
    assert used and used <= set(widgets), f"not in the .ui file: {used - set(widgets)}"


def test_ui_connects_the_scene_to_every_mrml_widget():
    tree = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / f"{EXTENSION_NAME}.ui")
    mrml_widgets = {name for name, widget in ui_widgets().items()
                    if widget.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
    receivers = {connection.findtext("receiver") for connection in tree.iter("connection")
                 if connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert mrml_widgets and mrml_widgets == receivers
    custom = {element.findtext("class") for element in tree.iter("customwidget")}
    used_classes = {widget.get("class") for widget in ui_widgets().values()}
    assert {c for c in used_classes if c.startswith(("qMRML", "ctk"))} <= custom
