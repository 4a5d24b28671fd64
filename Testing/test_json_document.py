"""JSON documents (manifests, the registry, training configurations) fail with one sentence."""

import pytest

from H3DELandmarksLib.errors import ModelPackageError
from H3DELandmarksLib.json_document import read_json_document
from H3DELandmarksLib.registry.catalog import load_registry
from H3DELandmarksLib.training.config import TrainingConfigError, load_training_config


def test_a_document_is_read_and_every_failure_names_the_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}', encoding="utf-8")
    assert read_json_document(good, ModelPackageError, "Thing") == {"a": [1, 2]}
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"name": "é"}'.encode("latin-1"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": 1,\n "b": }', encoding="utf-8")
    cases = {tmp_path / "missing.json": "Thing {} does not exist; look elsewhere.",
             latin: "Thing {} is not UTF-8 text.",
             broken: "Thing {} is not valid JSON (Expecting value at line 2, column 7)."}
    for path, message in cases.items():
        with pytest.raises(ModelPackageError) as raised:
            read_json_document(path, ModelPackageError, "Thing", missing_hint="; look elsewhere")
        assert str(raised.value) == message.format(path)


def test_registry_and_training_configuration_use_it(tmp_path):
    with pytest.raises(ModelPackageError, match=r"models.json does not exist; set H3DE_\w+ to a models.json\."):
        load_registry(tmp_path / "models.json")
    (tmp_path / "config.json").write_text("[", encoding="utf-8")
    with pytest.raises(TrainingConfigError, match=r"Training configuration .*config.json is not valid JSON"):
        load_training_config(tmp_path / "config.json")
