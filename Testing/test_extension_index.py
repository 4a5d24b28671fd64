"""The Extensions Index entry and the extension metadata, checked as the index's
`scripts/check_description_files.py` checks a submission (offline: every URL must name a file of
this repository, of an image type where the index downloads an image).

Checks mirrored: JSON format (LF line endings), the catalog entry schema (required and known keys,
types), extension name, category, repository name and URL scheme, the top-level CMakeLists.txt
(project name, icon and screenshot URLs with the index's own patterns), repository size and the
licence file. Also: the build dependency on PyTorch is stated in both places, and the minimum
Slicer version is enforced by the build and stated in the README.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "Docs" / "ExtensionsIndex" / "H3DELandmarks.json"
CMAKE = REPO / "CMakeLists.txt"
SCHEMA_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
REQUIRED_KEYS = {"$schema", "category", "scm_url"}
# ACCEPTED_EXTENSION_CATEGORIES of check_description_files.py.
ACCEPTED_CATEGORIES = {
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda",
    "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation",
    "Filtering", "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "Image Synthesis", "IGT",
    "Informatics", "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning",
    "Otolaryngology", "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy",
    "Registration", "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis",
    "Shape Regression", "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging",
    "Supervisely", "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking", "Tractography",
    "Training", "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools",
    "Web System Tools", "Wizards",
}
REPOSITORY_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
SIZE_LIMIT_MB = 100
# The patterns check_cmakelists_content uses.
PROJECT_PATTERN = r'project\s*\(\s*([^\s\)\n\r]+)'
ICON_URL_PATTERN = r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)'
SCREENSHOT_URLS_PATTERN = r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)'


@pytest.fixture(scope="module")
def entry() -> dict:
    return json.loads(ENTRY.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def cmake() -> str:
    return CMAKE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tracked_files() -> set[str]:
    listing = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listing.returncode != 0:
        pytest.skip("not a git checkout")
    return set(listing.stdout.splitlines())


def cmake_value(cmake: str, name: str) -> str:
    match = re.search(rf'set\(EXTENSION_{name} "([^"]*)"\)', cmake)
    assert match, f"EXTENSION_{name} is not set"
    return match.group(1)


def repository_path(url: str, entry: dict) -> str:
    """The file of this repository a raw.githubusercontent.com URL of the entry's repository names."""
    repository = urllib.parse.urlsplit(entry["scm_url"]).path.strip("/").removesuffix(".git")
    prefix = f"https://raw.githubusercontent.com/{repository}/{entry['scm_revision']}/"
    assert url.startswith(prefix), f"{url} is not a file of {entry['scm_url']} at {entry['scm_revision']}"
    return url[len(prefix):]


def test_entry_is_json_with_lf_line_endings():
    content = ENTRY.read_bytes()
    json.loads(content)
    assert b"\r" not in content


def test_entry_follows_the_catalog_entry_schema(entry):
    assert REQUIRED_KEYS <= set(entry) <= SCHEMA_KEYS, set(entry) ^ SCHEMA_KEYS
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/")
    assert all(isinstance(entry[key], str) for key in ("category", "scm_url", "scm_revision", "build_subdirectory"))
    assert isinstance(entry["build_dependencies"], list) and all(isinstance(d, str) for d in entry["build_dependencies"])
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5


def test_extension_name_category_and_repository(entry, cmake):
    name = ENTRY.stem
    assert not name.lower().startswith("slicer")
    assert entry["category"] in ACCEPTED_CATEGORIES
    assert entry["category"] == cmake_value(cmake, "CATEGORY")
    url = entry["scm_url"]
    assert "://" in url and urllib.parse.urlsplit(url).scheme in ("git", "https")
    repository_name = Path(urllib.parse.urlsplit(url).path.strip("/")).stem
    assert repository_name.startswith(REPOSITORY_PREFIXES)
    assert cmake_value(cmake, "HOMEPAGE") == url


def test_cmakelists_names_the_extension_as_the_entry_does(cmake):
    assert re.findall(PROJECT_PATTERN, cmake, re.IGNORECASE | re.MULTILINE)[0].strip("\"'") == ENTRY.stem


def test_icon_and_screenshot_urls_name_image_files_of_the_repository(entry, cmake, tracked_files):
    icon = re.findall(ICON_URL_PATTERN, cmake, re.IGNORECASE | re.MULTILINE)
    screenshots = re.findall(SCREENSHOT_URLS_PATTERN, cmake, re.IGNORECASE | re.MULTILINE)
    assert len(icon) == 1 and len(screenshots) == 1
    urls = [icon[0].strip(), *screenshots[0].split()]
    assert len(urls) >= 2
    for url in urls:
        path = repository_path(url, entry)
        assert path in tracked_files, f"{url} names {path}, which the repository does not hold"
        assert (REPO / path).read_bytes().startswith(IMAGE_SIGNATURES), f"{path} is not a PNG, JPEG or GIF image"


def test_repository_is_within_the_index_size_limit(tracked_files):
    total = sum((REPO / path).stat().st_size for path in tracked_files if (REPO / path).is_file())
    assert total / (1024 * 1024) < SIZE_LIMIT_MB


def test_the_code_licence_is_apache_2_at_the_root():
    found = [name for name in LICENSE_NAMES if (REPO / name).is_file()]
    assert found == ["LICENSE"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_pytorch_is_a_build_dependency_in_the_entry_and_the_extension(entry, cmake):
    assert entry["build_dependencies"] == ["PyTorch"]
    assert cmake_value(cmake, "DEPENDS") == "PyTorch"


def test_the_minimum_slicer_version_is_enforced_and_stated(cmake):
    from H3DELandmarksLib.requirements import MINIMUM_SLICER

    assert f'set(H3DE_MINIMUM_SLICER_VERSION "{MINIMUM_SLICER}")' in cmake
    assert "if(Slicer_VERSION VERSION_LESS H3DE_MINIMUM_SLICER_VERSION)" in cmake
    assert f"Slicer {MINIMUM_SLICER} or later" in cmake_value(cmake, "DESCRIPTION")
    assert f"3D Slicer {MINIMUM_SLICER} or later" in (REPO / "README.md").read_text(encoding="utf-8")
