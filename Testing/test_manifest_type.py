"""The typed Manifest: the one way every writer builds a manifest.json document."""

from __future__ import annotations

import json

import numpy as np

from H3DELandmarksLib.model.config import default_config
from H3DELandmarksLib.registry import SCHEMA_VERSION, Manifest, validate_manifest
from H3DELandmarksLib.registry.schema import SCHEMA_DIR

FINE = {"name": "fine", "spacing_mm": [1.0, 1.0, 1.0], "patch_size": [32, 32, 32], "orientation": "shape-aligned"}


def shape_aligned_manifest(**changes) -> Manifest:
    settings = dict(
        id="shape-test", version="1.2.3", title="Shape test", config=default_config(6),
        landmark_names=list("abcdef"), landmark_descriptions=["first", "", "third", "", "", ""],
        intensity={"clip_min": 0.0, "clip_max": 255.0, "scale_min": 0.0, "scale_max": 1.0}, stages=[FINE],
        mean_shape=np.array([[1.234567, 2.0, 3.0], [np.nan] * 3, [4.0, 5.0, 6.000049], [0, 0, 1], [0, 1, 0], [1, 0, 0]]),
        created="2026-01-01T00:00:00Z",
    )
    return Manifest(**{**settings, **changes})


def test_the_document_is_valid_and_says_what_was_given():
    document = shape_aligned_manifest().to_dict()
    validate_manifest(document)
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["landmarks"][:3] == [{"name": "a", "description": "first"}, {"name": "b"},
                                         {"name": "c", "description": "third"}]
    assert document["preprocessing"]["mean_shape"][:3] == [[1.2346, 2.0, 3.0], None, [4.0, 5.0, 6.0]]
    assert document["architecture"] == default_config(6).to_dict()
    assert "heatmap_peak" not in document and "citation" not in document and "uncertainty" not in document
    assert json.loads(json.dumps(document)) == document


def test_optional_fields_appear_when_given_and_created_defaults_to_now():
    document = shape_aligned_manifest(heatmap_peak=2.0, citation="A paper", created=Manifest.__dataclass_fields__[
        "created"].default_factory()).to_dict()
    validate_manifest(document)
    assert document["heatmap_peak"] == 2.0 and document["citation"] == "A paper"
    assert document["created"].endswith("Z") and document["created"] > "2026"


def test_the_schema_states_the_same_schema_version():
    schema = json.loads((SCHEMA_DIR / "manifest.schema.json").read_text(encoding="utf-8"))
    assert schema["properties"]["schema_version"] == {"const": SCHEMA_VERSION}
