"""The Triton boundary: the only module that imports tritonclient.

Async gRPC (tritonclient.grpc.aio) with a bounded number of requests in flight, readiness
with a deadline, typed model specs read from the server, UNAVAILABLE retried with backoff
inside a deadline, and every failure raised as a typed error carrying the model name and
Triton's own message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferInput, InferRequestedOutput, InferResult, model_config_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from orchestrator.contracts import TensorSpec
from orchestrator.errors import (
    InferenceError,
    TritonRejected,
    TritonTimeout,
    TritonUnavailable,
)

T = TypeVar("T")
SERVER = "server"  # the "model" named in errors that concern the whole server
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 2.0


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
    ) -> None:
        self.url = url
        self.request_timeout_s = request_timeout_s
        self.retry_deadline_s = retry_deadline_s
        self.max_in_flight = max_in_flight
        self._client = grpcclient.InferenceServerClient(url)
        self._slots = asyncio.Semaphore(max_in_flight)
        self.in_flight = 0
        # Set by the service to observe latency and requests in flight; None: no one listens.
        self.observer: InferObserver | None = None

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> TritonClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _call(
        self, model: str, what: str, attempt: Callable[[float], Awaitable[T]], deadline_s: float
    ) -> T:
        """Runs one RPC; UNAVAILABLE is retried with backoff until `deadline_s` has passed."""
        deadline = time.monotonic() + deadline_s
        delay = BACKOFF_START_S
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await attempt(max(remaining, 0.001))
            except InferenceServerException as exc:
                status, message = _status(exc), _message(exc)
                if status == "DEADLINE_EXCEEDED":
                    raise TritonTimeout(
                        model, f"{what} ran past its {deadline_s:.1f} s deadline ({message})"
                    ) from exc
                if status != "UNAVAILABLE":
                    raise TritonRejected(model, f"{what} failed: {message}") from exc
                if time.monotonic() + delay > deadline:
                    raise TritonUnavailable(
                        model,
                        f"{what}: Triton at {self.url} unavailable for {deadline_s:.1f} s "
                        f"({message})",
                    ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def wait_ready(self, models: list[str], deadline_s: float) -> None:
        """Returns when the server and every model are READY; TritonUnavailable otherwise."""

        async def all_ready(remaining: float) -> bool:
            t = min(remaining, 5.0)
            if not await self._client.is_server_ready(client_timeout=t):
                raise InferenceServerException(
                    "server is live but not ready", "StatusCode.UNAVAILABLE"
                )
            for model in models:
                if not await self._client.is_model_ready(model, client_timeout=t):
                    await self._why_not_ready(model, t)
            return True

        try:
            await self._call(SERVER, "readiness", all_ready, deadline_s)
        except TritonTimeout as exc:
            raise TritonUnavailable(SERVER, exc.message) from exc

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
            self.retry_deadline_s,
        )
        reply = await self._call(
            model,
            "reading config",
            lambda t: self._client.get_model_config(model, client_timeout=t),
            self.retry_deadline_s,
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
        )

    async def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        """One request; waits for a free slot so at most `max_in_flight` are outstanding."""
        request_inputs = []
        for name, array in inputs.items():
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            request_inputs.append(tensor)
        requested = [InferRequestedOutput(name) for name in outputs]

        async def once(remaining: float) -> InferResult:
            return await self._client.infer(
                model,
                request_inputs,
                outputs=requested,
                client_timeout=min(remaining, self.request_timeout_s),
            )

        async with self._slots:
            self.in_flight += 1
            observer, started, ok = self.observer, time.monotonic(), False
            if observer is not None:
                observer.infer_started(model)
            try:
                result = await self._call(
                    model, "inference", once, self.request_timeout_s + self.retry_deadline_s
                )
                ok = True
            finally:
                self.in_flight -= 1
                if observer is not None:
                    observer.infer_finished(model, time.monotonic() - started, ok)
        arrays = {}
        for name in outputs:
            array = result.as_numpy(name)
            if array is None:
                raise InferenceError(model, f"response has no output '{name}'")
            arrays[name] = array
        return arrays

    async def server_version(self) -> str:
        reply = await self._call(
            SERVER,
            "reading server metadata",
            lambda t: self._client.get_server_metadata(client_timeout=t),
            self.retry_deadline_s,
        )
        return str(reply.version)

    async def statistics(self, model: str) -> ModelStats:
        reply = await self._call(
            model,
            "reading statistics",
            lambda t: self._client.get_inference_statistics(model, client_timeout=t),
            self.retry_deadline_s,
        )
        stats = reply.model_stats
        return ModelStats(
            inference_count=sum(s.inference_count for s in stats),
            execution_count=sum(s.execution_count for s in stats),
        )
