"""The Triton boundary: the only module that imports tritonclient.

Async gRPC (tritonclient.grpc.aio) with a bounded number of requests in flight, readiness
with a deadline, typed model specs read from the server, UNAVAILABLE retried with backoff
inside a deadline, and every failure raised as a typed error carrying the model name and
Triton's own message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import (
    MAX_GRPC_MESSAGE_SIZE,
    InferInput,
    InferRequestedOutput,
    InferResult,
    KeepAliveOptions,
    model_config_pb2,
)
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from orchestrator.contracts import TensorSpec
from orchestrator.errors import (
    SERVER,
    InferenceError,
    TritonRejected,
    TritonTimeout,
    TritonUnavailable,
)
from orchestrator.triton_url import parse_triton_url

T = TypeVar("T")
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 1.0
# Deadline of one small RPC (health, metadata, statistics): these answer in milliseconds.
RPC_TIMEOUT_S = 5.0
# gRPC waits 1 s, then up to 120 s (x1.6 each time) between reconnects to a server that
# went away, which kept readiness 8-11 s behind a restarted Triton; a local or in-cluster
# server is cheap to retry, so reconnect at least once a second.
RECONNECT_BACKOFF_MS = 250
MAX_RECONNECT_BACKOFF_MS = 1000
# gRPC's own balancer over every address of the target (a list, or a DNS name with several
# addresses): each request goes to the next READY server, and the channel is READY while
# any one is. An RPC cut off by a dying server fails UNAVAILABLE and `_call` retries it on
# a live one. No gRPC `retryPolicy`: gRPC replays only requests that fit its per-RPC retry
# buffer (256 KiB by default; a lipsync batch is megabytes), and `_call` already retries
# every RPC within one deadline that the readiness gate understands.
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# Triton's request priority: 1 is the highest level; 0 asks for the model's
# `default_priority_level`. A model without `priority_levels` ignores it (every request is
# served in arrival order), so asking is always safe.
HIGHEST_PRIORITY = 1
DEFAULT_PRIORITY = 0


@dataclass(frozen=True)
class InstanceGroup:
    kind: str  # "KIND_GPU", "KIND_CPU", ...
    count: int
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """What Triton says about one model: tensors from its metadata, serving from its config."""

    name: str
    versions: tuple[str, ...]
    platform: str
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    instance_groups: tuple[InstanceGroup, ...]
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    max_queue_size: int
    # The dynamic batcher's priority levels (0: none, every request in arrival order).
    priority_levels: int = 0
    # The config's `parameters` with a string value: how the pipeline should use the model
    # (the lipsync model's "composite" mode).
    parameters: dict[str, str] = field(default_factory=dict)


class InferObserver(Protocol):
    """Told about every inference request (metrics); must not block or raise."""

    def infer_started(self, model: str) -> None: ...
    def infer_finished(self, model: str, seconds: float, ok: bool) -> None: ...


@dataclass(frozen=True)
class ModelStats:
    inference_count: int
    execution_count: int


def _status(exc: InferenceServerException) -> str:
    return str(exc.status() or "").rsplit(".", 1)[-1]


def _message(exc: InferenceServerException) -> str:
    return exc.message() or str(exc) or _status(exc) or "no message from Triton"


def _channel_args() -> list[tuple[str, Any]]:
    """tritonclient's own defaults (message sizes, keepalive) plus fast reconnects."""
    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ("grpc.service_config", SERVICE_CONFIG),
    ]


def _tensors(metadata_tensors: object, batched: bool) -> dict[str, TensorSpec]:
    specs = {}
    for t in metadata_tensors:  # type: ignore[attr-defined]
        shape = tuple(int(d) for d in t.shape)
        specs[t.name] = TensorSpec(t.name, t.datatype, shape[1:] if batched else shape)
    return specs


class TritonClient:
    def __init__(
        self,
        url: str,
        *,
        request_timeout_s: float = 60.0,
        retry_deadline_s: float = 10.0,
        max_in_flight: int = 8,
        priority: int = DEFAULT_PRIORITY,
    ) -> None:
        self.url = url
        # Validated before any channel exists: a malformed DH_TRITON_URL is a start-up error.
        self.target = parse_triton_url(url)
        self.request_timeout_s = request_timeout_s
        self.retry_deadline_s = retry_deadline_s
        self.max_in_flight = max_in_flight
        # Every inference request of this client asks for this level (HIGHEST_PRIORITY for
        # live frames, whose deadline is a frame period away).
        self.priority = priority
        self._client = grpcclient.InferenceServerClient(
            self.target.target, channel_args=_channel_args()
        )
        self._slots = asyncio.Semaphore(max_in_flight)
        self.in_flight = 0
        # Set by the service to observe latency and requests in flight; None: no one listens.
        self.observer: InferObserver | None = None

    async def close(self) -> None:
        await self._client.close()

    async def connection_changed(self, timeout_s: float) -> None:
        """Returns when the channel's connection state changes (Triton went away or came
        back) or after `timeout_s`; lets a watcher react to the event instead of polling."""
        channel = self._channel()
        state = channel.get_state(try_to_connect=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await channel.wait_for_state_change(state)

    def _channel(self) -> grpc.aio.Channel:
        # tritonclient keeps its channel private and offers no connectivity API; this
        # module is the one place that knows.
        channel: grpc.aio.Channel = self._client._channel
        return channel

    async def __aenter__(self) -> TritonClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _call(
        self,
        model: str,
        what: str,
        attempt: Callable[[float], Awaitable[T]],
        timeout_s: float,
        stage: str = "infer",
        retry_s: float | None = None,
    ) -> T:
        """Runs one RPC with `timeout_s` per attempt. UNAVAILABLE (no server, or a model
        not loaded yet) is retried with backoff for `retry_s` (default: the client's
        retry deadline) counted from the first refusal, so an outage costs a job that
        long, not the request timeout on top."""
        retry_s = self.retry_deadline_s if retry_s is None else retry_s
        first_refusal: float | None = None
        delay = BACKOFF_START_S
        while True:
            try:
                return await attempt(timeout_s)
            except InferenceServerException as exc:
                status, message = _status(exc), _message(exc)
                if status == "DEADLINE_EXCEEDED":
                    raise TritonTimeout(
                        model,
                        f"{what} ran past its {timeout_s:.1f} s deadline ({message})",
                        stage,
                    ) from exc
                if status != "UNAVAILABLE":
                    raise TritonRejected(model, f"{what} failed: {message}", stage) from exc
                now = time.monotonic()
                first_refusal = now if first_refusal is None else first_refusal
                if now + delay - first_refusal > retry_s:
                    raise TritonUnavailable(
                        model,
                        f"{what}: Triton at {self.url} unavailable for {retry_s:.1f} s ({message})",
                        stage,
                    ) from exc
            await asyncio.sleep(delay)  # backoff between retries, not a wait for state
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def wait_ready(self, models: list[str], deadline_s: float) -> None:
        """Returns when the server and every model are READY; TritonUnavailable otherwise."""

        async def all_ready(timeout_s: float) -> bool:
            if not await self._client.is_server_ready(client_timeout=timeout_s):
                raise InferenceServerException(
                    "server is live but not ready", "StatusCode.UNAVAILABLE"
                )
            for model in models:
                if not await self._client.is_model_ready(model, client_timeout=timeout_s):
                    await self._why_not_ready(model, timeout_s)
            return True

        try:
            attempt_s = min(deadline_s, RPC_TIMEOUT_S)
            await self._call(SERVER, "readiness", all_ready, attempt_s, "startup", deadline_s)
        except TritonTimeout as exc:
            raise TritonUnavailable(SERVER, exc.message, "startup") from exc

    async def _why_not_ready(self, model: str, rpc_timeout_s: float) -> None:
        """Fails at once for a model Triton does not have or could not load; a model still
        loading raises UNAVAILABLE so that readiness keeps waiting."""
        index = await self._client.get_model_repository_index(client_timeout=rpc_timeout_s)
        states = {entry.name: entry for entry in index.models}
        if model not in states:
            have = ", ".join(sorted(states)) or "none"
            raise TritonRejected(model, f"not in Triton's model repository (it has: {have})")
        entry = states[model]
        if entry.state == "UNAVAILABLE" and entry.reason:
            raise TritonRejected(model, f"failed to load: {entry.reason}")
        raise InferenceServerException(
            f"model '{model}' is not ready ({entry.state or 'unknown state'})",
            "StatusCode.UNAVAILABLE",
        )

    async def model_spec(self, model: str) -> ModelSpec:
        meta = await self._call(
            model,
            "reading metadata",
            lambda t: self._client.get_model_metadata(model, client_timeout=t),
            RPC_TIMEOUT_S,
            "startup",
        )
        reply = await self._call(
            model,
            "reading config",
            lambda t: self._client.get_model_config(model, client_timeout=t),
            RPC_TIMEOUT_S,
            "startup",
        )
        config = reply.config
        batched = config.max_batch_size > 0
        kind_name = model_config_pb2.ModelInstanceGroup.Kind.Name
        batching = config.dynamic_batching
        return ModelSpec(
            name=model,
            versions=tuple(meta.versions),
            platform=config.platform or config.backend,
            max_batch_size=config.max_batch_size,
            inputs=_tensors(meta.inputs, batched),
            outputs=_tensors(meta.outputs, batched),
            instance_groups=tuple(
                InstanceGroup(kind_name(g.kind), g.count, tuple(g.gpus))
                for g in config.instance_group
            ),
            preferred_batch_sizes=tuple(batching.preferred_batch_size),
            max_queue_delay_us=batching.max_queue_delay_microseconds,
            max_queue_size=batching.default_queue_policy.max_queue_size,
            priority_levels=batching.priority_levels,
            parameters={key: p.string_value for key, p in config.parameters.items()},
        )

    async def model_served(self, model: str) -> bool:
        """Whether Triton serves `model` now (an optional model: False is an answer, not an
        error); an unreachable server still raises TritonUnavailable."""
        try:
            return await self._call(
                model,
                "readiness",
                lambda t: self._client.is_model_ready(model, client_timeout=t),
                RPC_TIMEOUT_S,
                "startup",
            )
        except TritonRejected:
            return False

    async def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        stage: str = "infer",
    ) -> dict[str, np.ndarray]:
        """One request; waits for a free slot so at most `max_in_flight` are outstanding.
        Errors are reported as `stage`'s (the detector's requests belong to "avatar")."""
        request_inputs = []
        for name, array in inputs.items():
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            request_inputs.append(tensor)
        requested = [InferRequestedOutput(name) for name in outputs]

        async def once(timeout_s: float) -> InferResult:
            return await self._client.infer(
                model,
                request_inputs,
                outputs=requested,
                priority=self.priority,
                client_timeout=timeout_s,
            )

        async with self._slots:
            self.in_flight += 1
            observer, started, ok = self.observer, time.monotonic(), False
            if observer is not None:
                observer.infer_started(model)
            try:
                result = await self._call(model, "inference", once, self.request_timeout_s, stage)
                ok = True
            finally:
                self.in_flight -= 1
                if observer is not None:
                    observer.infer_finished(model, time.monotonic() - started, ok)
        arrays = {}
        for name in outputs:
            array = result.as_numpy(name)
            if array is None:
                raise InferenceError(model, f"response has no output '{name}'", stage)
            arrays[name] = array
        return arrays

    async def server_version(self) -> str:
        reply = await self._call(
            SERVER,
            "reading server metadata",
            lambda t: self._client.get_server_metadata(client_timeout=t),
            RPC_TIMEOUT_S,
        )
        return str(reply.version)

    async def statistics(self, model: str) -> ModelStats:
        reply = await self._call(
            model,
            "reading statistics",
            lambda t: self._client.get_inference_statistics(model, client_timeout=t),
            RPC_TIMEOUT_S,
        )
        stats = reply.model_stats
        return ModelStats(
            inference_count=sum(s.inference_count for s in stats),
            execution_count=sum(s.execution_count for s in stats),
        )
