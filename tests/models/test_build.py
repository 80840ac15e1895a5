"""Model builds are skipped when nothing they read changed, and fail with one clear line."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from modelkit.build import (
    COMPOSITE_DELTA,
    COMPOSITE_REPLACE,
    Artifact,
    build,
    configure_lipsync,
    lipsync_artifact,
)
from modelkit.errors import ModelBuildError
from modelkit.reference import export_reference
from modelkit.repository import read_config
from tests.conftest import MODEL_REPOSITORY


def _repository_copy(tmp_path: Path) -> Path:
    repository = tmp_path / "model_repository"
    shutil.copytree(
        MODEL_REPOSITORY / "lipsync", repository / "lipsync", ignore=shutil.ignore_patterns("1")
    )
    return repository


def test_second_build_is_skipped_and_a_changed_input_rebuilds(tmp_path: Path) -> None:
    repository = _repository_copy(tmp_path)
    stamps = tmp_path / "stamps"
    artifact = lipsync_artifact(repository, "reference")
    assert build(artifact, stamps, log=lambda _: None) is True
    assert artifact.out.is_file()
    assert build(artifact, stamps, log=lambda _: None) is False

    changed = Artifact(
        artifact.name, artifact.out, artifact.make, artifact.code, params={"face_size": 64}
    )
    assert build(changed, stamps, log=lambda _: None) is True


def test_a_deleted_output_is_rebuilt(tmp_path: Path) -> None:
    artifact = lipsync_artifact(_repository_copy(tmp_path), "reference")
    build(artifact, tmp_path / "stamps", log=lambda _: None)
    artifact.out.unlink()
    assert build(artifact, tmp_path / "stamps", log=lambda _: None) is True


def test_missing_input_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "weights.pth"
    artifact = Artifact("x", tmp_path / "x.onnx", export_reference, code=[], files=[missing])
    with pytest.raises(ModelBuildError, match=r"nowhere/weights\.pth: file not found"):
        build(artifact, tmp_path / "stamps", log=lambda _: None)


def test_checkpoint_source_without_a_path_says_what_is_needed(tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError, match="--wav2lip-checkpoint"):
        lipsync_artifact(_repository_copy(tmp_path), "checkpoint")


def test_missing_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError, match=r"lipsync/config\.pbtxt: missing"):
        lipsync_artifact(tmp_path, "reference")


# Triton 24.10 (the NGC image docker-compose.yml pins) bundles ONNX Runtime 1.19, which
# reads models up to IR version 10 and opset 21; the local onnxruntime is newer and would
# not notice a model that production cannot load.
MAX_IR_VERSION = 10
MAX_OPSET = 21


def test_built_models_load_in_the_production_onnx_runtime(built_models: Path) -> None:
    for model in ("lipsync", "face_detector"):
        proto = onnx.load(str(built_models / model / "1" / "model.onnx"), load_external_data=False)
        assert proto.ir_version <= MAX_IR_VERSION, model
        assert all(
            o.version <= MAX_OPSET for o in proto.opset_import if o.domain in ("", "ai.onnx")
        )


def test_the_composite_mode_is_written_only_when_it_changes(tmp_path: Path) -> None:
    repository = _repository_copy(tmp_path)
    committed = (repository / "lipsync" / "config.pbtxt").read_bytes()
    size = read_config(repository / "lipsync").input[1].dims[-1]
    # The committed config is the reference model's ("delta"): left as it is, comments and all.
    assert not configure_lipsync(repository / "lipsync", size, COMPOSITE_DELTA)
    assert (repository / "lipsync" / "config.pbtxt").read_bytes() == committed
    assert configure_lipsync(repository / "lipsync", size, COMPOSITE_REPLACE)
    config = read_config(repository / "lipsync")
    assert config.parameters["composite"].string_value == "replace"
