"""The CPU copy of the repository changes only what the CPU needs and nothing else."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from localtriton.launcher import default_ort_threads
from localtriton.render import render_cpu_repository
from modelkit.errors import ModelBuildError
from modelkit.repository import read_config
from tests.conftest import MODEL_REPOSITORY


def test_cpu_copy_keeps_batching_tensors_and_warmup(built_models: Path, tmp_path: Path) -> None:
    target = tmp_path / "cpu"
    names = render_cpu_repository(built_models, target)
    assert sorted(names) == ["face_detector", "lipsync"]
    for name in names:
        gpu, cpu = read_config(built_models / name), read_config(target / name)
        assert cpu.backend == "python" and not cpu.platform
        assert {g.kind for g in cpu.instance_group} == {
            model_config_pb2.ModelInstanceGroup.KIND_CPU
        }
        assert [g.count for g in cpu.instance_group] == [g.count for g in gpu.instance_group]
        for field in ("max_batch_size", "input", "output", "dynamic_batching", "model_warmup"):
            assert getattr(cpu, field) == getattr(gpu, field), field
        onnx_link = target / name / "1" / "model.onnx"
        assert onnx_link.resolve() == (built_models / name / "1" / "model.onnx").resolve()
        assert (target / name / "1" / "model.py").is_file()


def test_missing_onnx_file_says_how_to_build_it(tmp_path: Path) -> None:
    source = tmp_path / "repo"
    shutil.copytree(
        MODEL_REPOSITORY / "lipsync", source / "lipsync", ignore=shutil.ignore_patterns("*.onnx")
    )
    (source / "lipsync" / "1").mkdir(exist_ok=True)
    with pytest.raises(ModelBuildError, match=r"lipsync/1/model\.onnx: missing; build it"):
        render_cpu_repository(source, tmp_path / "cpu")


def test_repository_without_models_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError, match="no model directories"):
        render_cpu_repository(tmp_path, tmp_path / "cpu")


def test_instances_share_the_cores_instead_of_each_taking_all(
    built_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "cpu"
    render_cpu_repository(built_models, target, cpu_instances=2)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_ort_threads(target) == 4
    render_cpu_repository(built_models, target, cpu_instances=16)
    assert default_ort_threads(target) == 1
