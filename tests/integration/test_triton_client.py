"""The async Triton client against the real local server."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import numpy as np
import pytest

from localtriton.server import free_port
from modelkit.talking import expected_prediction
from orchestrator.errors import ContractMismatch, TritonRejected, TritonUnavailable
from orchestrator.models import check_lipsync, load_served_models
from orchestrator.pipeline.composite import CompositeMode
from orchestrator.settings import Settings
from orchestrator.triton import HIGHEST_PRIORITY, TritonClient
from tests.conftest import WAV2LIP_MODEL, TritonAddress


async def test_both_models_are_ready_and_match_the_contract(
    triton_client: TritonClient, settings: Settings
) -> None:
    served = await load_served_models(triton_client, settings)
    assert served.face_size == 96
    assert served.lipsync.max_batch_size >= 64
    assert served.detector.max_batch_size >= 16
    assert served.lipsync.preferred_batch_sizes


async def test_composite_mode_and_the_missing_restorer_are_read_from_triton(
    triton_client: TritonClient, settings: Settings
) -> None:
    served = await load_served_models(triton_client, settings)
    # The committed config of the analytic reference model asks for delta.
    assert served.composite == CompositeMode.DELTA
    # No face_restore model on the session's server: unavailable, and said why, not an error.
    assert served.face_restore is None
    assert served.restore_unavailable == "Triton serves no 'face_restore' model"
    assert [spec.name for spec in served.specs] == ["lipsync", "face_detector"]
    wav2lip = await load_served_models(
        triton_client, settings.model_copy(update={"lipsync_model": WAV2LIP_MODEL})
    )
    assert wav2lip.composite == CompositeMode.REPLACE, "a real generator's face is pasted"


async def test_reference_model_matches_its_formula_through_triton(
    triton_client: TritonClient,
) -> None:
    rng = np.random.default_rng(3)
    mel = rng.uniform(-4, 4, (4, 1, 80, 16)).astype(np.float32)
    face = rng.uniform(0, 1, (4, 6, 96, 96)).astype(np.float32)
    out = await triton_client.infer("lipsync", {"mel": mel, "face": face}, ["pred"])
    np.testing.assert_allclose(out["pred"], expected_prediction(mel, face), atol=1e-5)


async def test_live_frames_ask_for_the_highest_priority_and_are_served(
    triton_client: TritonClient, settings: Settings
) -> None:
    # Both lipsync models load with two priority levels (the Wav2Lip one's config is
    # written from the committed one, as modelkit.build writes every generator size's).
    for model in ("lipsync", WAV2LIP_MODEL):
        assert (await triton_client.model_spec(model)).priority_levels == 2
    rng = np.random.default_rng(5)
    mel = rng.uniform(-4, 4, (3, 1, 80, 16)).astype(np.float32)
    face = rng.uniform(0, 1, (3, 6, 96, 96)).astype(np.float32)
    async with TritonClient(settings.triton_url, priority=HIGHEST_PRIORITY) as live:
        out = await live.infer("lipsync", {"mel": mel, "face": face}, ["pred"])
    np.testing.assert_allclose(out["pred"], expected_prediction(mel, face), atol=1e-5)


async def test_dynamic_batching_merges_concurrent_requests(triton_client: TritonClient) -> None:
    rng = np.random.default_rng(4)
    before = await triton_client.statistics("lipsync")

    async def one_frame() -> None:
        mel = rng.uniform(-4, 4, (1, 1, 80, 16)).astype(np.float32)
        face = rng.uniform(0, 1, (1, 6, 96, 96)).astype(np.float32)
        await triton_client.infer("lipsync", {"mel": mel, "face": face}, ["pred"])

    async with asyncio.TaskGroup() as group:
        for _ in range(64):
            group.create_task(one_frame())
    after = await triton_client.statistics("lipsync")
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 64
    assert executions < inferences, f"{executions} executions for 64 requests: no batching"


def test_metrics_endpoint_counts_inferences_for_both_models(triton: TritonAddress) -> None:
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    for model in ("lipsync", "face_detector"):
        assert f'nv_inference_count{{model="{model}",version="1"}}' in text


async def test_a_model_with_other_tensors_fails_the_contract_clearly(
    triton_client: TritonClient,
) -> None:
    detector = await triton_client.model_spec("face_detector")
    with pytest.raises(ContractMismatch) as caught:
        check_lipsync(detector)
    assert caught.value.model == "face_detector"
    assert str(caught.value) == (
        "infer: model 'face_detector': has no input 'mel' (expected FP32 [1, 80, 16]); "
        "it has: image FP32 [3, -1, -1]"
    )


async def test_wrong_input_is_rejected_with_tritons_message(triton_client: TritonClient) -> None:
    wrong = np.zeros((1, 1, 80, 15), np.float32)
    face = np.zeros((1, 6, 96, 96), np.float32)
    with pytest.raises(TritonRejected) as caught:
        await triton_client.infer("lipsync", {"mel": wrong, "face": face}, ["pred"])
    assert caught.value.model == "lipsync"
    assert "mel" in caught.value.message and "16" in caught.value.message


async def test_unknown_model_is_a_typed_error(triton_client: TritonClient) -> None:
    with pytest.raises(TritonRejected, match="model 'no_such_model'"):
        await triton_client.model_spec("no_such_model")


async def test_stopped_triton_fails_typed_within_its_retry_deadline() -> None:
    # The request timeout is far longer: an outage must cost the retry deadline alone.
    retry_deadline_s = 1.5
    async with TritonClient(
        f"127.0.0.1:{free_port()}", request_timeout_s=60.0, retry_deadline_s=retry_deadline_s
    ) as client:
        started = time.monotonic()
        with pytest.raises(TritonUnavailable) as caught:
            await client.infer(
                "lipsync",
                {
                    "mel": np.zeros((1, 1, 80, 16), np.float32),
                    "face": np.zeros((1, 6, 96, 96), np.float32),
                },
                ["pred"],
            )
        elapsed = time.monotonic() - started
    assert caught.value.model == "lipsync"
    assert "unavailable" in caught.value.message and caught.value.message.strip()
    assert caught.value.stage == "infer"
    assert elapsed < retry_deadline_s + 1.0, f"took {elapsed:.1f} s"


async def test_readiness_wait_gives_up_at_its_deadline() -> None:
    async with TritonClient(f"127.0.0.1:{free_port()}") as client:
        started = time.monotonic()
        with pytest.raises(TritonUnavailable) as caught:
            await client.wait_ready(["lipsync"], deadline_s=1.0)
        assert time.monotonic() - started < 3.0
    assert caught.value.stage == "startup"
    assert caught.value.message.startswith("readiness: Triton at 127.0.0.1:")
    assert "unavailable for 1.0 s" in caught.value.message


async def test_a_model_missing_from_the_repository_fails_readiness_at_once(
    triton_client: TritonClient,
) -> None:
    started = time.monotonic()
    with pytest.raises(TritonRejected) as caught:
        await triton_client.wait_ready(["lipsync", "lipsnyc"], deadline_s=60)
    assert time.monotonic() - started < 5
    assert caught.value.model == "lipsnyc"
    assert (
        "not in Triton's model repository (it has: face_detector, lipsync" in caught.value.message
    )
