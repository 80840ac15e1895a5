"""Reading the model repository's config.pbtxt files with Triton's own protobuf schema."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from modelkit.errors import ModelBuildError

CONFIG_NAME = "config.pbtxt"
ONNX_NAME = "model.onnx"


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    path = model_dir / CONFIG_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ModelBuildError(f"{path}: missing; every model directory needs one") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelBuildError(f"{path}: not a valid Triton model config: {exc}") from None


def write_config(config: model_config_pb2.ModelConfig, model_dir: Path) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / CONFIG_NAME).write_text(text_format.MessageToString(config))


def model_dirs(repository: Path) -> list[Path]:
    """Every model directory (one holding a config.pbtxt) in the repository, sorted."""
    if not repository.is_dir():
        raise ModelBuildError(f"{repository}: model repository not found")
    return sorted(p.parent for p in repository.glob(f"*/{CONFIG_NAME}"))


def onnx_path(repository: Path, model: str, version: int = 1) -> Path:
    return repository / model / str(version) / ONNX_NAME


def input_dims(config: model_config_pb2.ModelConfig, name: str) -> list[int]:
    for tensor in config.input:
        if tensor.name == name:
            return list(tensor.dims)
    raise ModelBuildError(f"model '{config.name}' has no input '{name}' in its config")
