"""The production model repository is configured for GPU serving with bounded queues."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2

from modelkit.repository import model_dirs, read_config
from tests.conftest import MODEL_REPOSITORY

# Each model's floor for max_batch_size, from the foundation issue.
MIN_BATCH = {"lipsync": 64, "face_detector": 16}


def test_repository_holds_both_models() -> None:
    assert [d.name for d in model_dirs(MODEL_REPOSITORY)] == ["face_detector", "lipsync"]


@pytest.mark.parametrize("model", sorted(MIN_BATCH))
def test_config_is_set_up_for_batched_gpu_serving(model: str) -> None:
    config = read_config(MODEL_REPOSITORY / model)
    assert config.name == model
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size >= MIN_BATCH[model]
    batching = config.dynamic_batching
    assert config.HasField("dynamic_batching")
    assert batching.preferred_batch_size, "preferred batch sizes are set"
    assert all(size <= config.max_batch_size for size in batching.preferred_batch_size)
    assert batching.max_queue_delay_microseconds > 0
    assert batching.default_queue_policy.max_queue_size > 0, "overload is refused, not queued"
    assert config.instance_group
    assert all(
        group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count >= 1
        for group in config.instance_group
    )
    assert config.model_warmup
    inputs = {t.name for t in config.input}
    for warmup in config.model_warmup:
        assert set(warmup.inputs) == inputs, "warm-up feeds every input"
        assert 1 <= warmup.batch_size <= config.max_batch_size


def test_lipsync_serves_live_frames_before_batch_work() -> None:
    batching = read_config(MODEL_REPOSITORY / "lipsync").dynamic_batching
    # Live sessions ask for level 1 (orchestrator.triton.HIGHEST_PRIORITY); batch jobs ask
    # for none and get the default, which must be the lower level.
    assert batching.priority_levels >= 2
    assert batching.default_priority_level == batching.priority_levels
