"""The sessions of this replica: opened against a prepared avatar, bounded by
DH_MAX_SESSIONS, ended by DELETE, by their peer going away, or by waiting too long for one.

Sessions live in memory in the process that holds their WebRTC peer (a peer's UDP sockets
cannot move to another replica); nothing about them is stored.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from aiortc import RTCSessionDescription

from orchestrator.blocking import run_blocking
from orchestrator.errors import Backlogged, Conflict, NotFound, PipelineError
from orchestrator.jobs.lifecycle import AvatarState
from orchestrator.jobs.store import JobStore
from orchestrator.live.peer import Peer, host_addresses, ice_configuration
from orchestrator.live.session import LiveModel, Session, SessionState
from orchestrator.metrics import ServiceMetrics
from orchestrator.models import load_served_models
from orchestrator.pipeline.avatar_cache import Avatar, load_avatar
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from orchestrator.storage import Storage
from orchestrator.triton import DEFAULT_PRIORITY, HIGHEST_PRIORITY, TritonClient

log = logging.getLogger(__name__)
STAGE = "sessions"
# Retry-After of a refusal at capacity: sessions last minutes, so retrying sooner than a
# few seconds only adds load.
FULL_RETRY_AFTER_S = 10
# Lipsync requests one session may have in flight: the frames rendered ahead of the clock
# (DH_LIVE_LATENCY_S less the model's look-ahead, a few frames).
LIVE_IN_FLIGHT_PER_SESSION = 8


class Sessions:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        store: JobStore,
        storage: Storage,
        metrics: ServiceMetrics,
    ) -> None:
        self.settings = settings
        self._engine = engine
        self._store = store
        self._storage = storage
        self._metrics = metrics
        # Live frames have a deadline: a client of their own, so a batch job's requests in
        # flight (the engine's client is bounded by DH_TRITON_MAX_IN_FLIGHT) never queue
        # them in this process. Triton's dynamic batcher still merges them all, and serves
        # them first where the model has priority levels (DH_LIVE_PRIORITY).
        self._client = TritonClient(
            settings.triton_url,
            request_timeout_s=settings.triton_request_timeout_s,
            retry_deadline_s=settings.triton_retry_deadline_s,
            max_in_flight=max(
                settings.triton_max_in_flight, LIVE_IN_FLIGHT_PER_SESSION * settings.max_sessions
            ),
            priority=HIGHEST_PRIORITY if settings.live_priority else DEFAULT_PRIORITY,
        )
        self._client.observer = metrics
        self._sessions: dict[str, Session] = {}
        self._peers: dict[str, Peer] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._peer_changed: dict[str, asyncio.Event] = {}
        self._opening = 0
        self._model: LiveModel | None = None
        self._ice = ice_configuration(settings.ice_servers)
        self._patches = ExitStack()
        # Reading avatar frames, mel windows and composites of every session.
        self._pool = ThreadPoolExecutor(settings.work_threads, thread_name_prefix="dh-live")

    def start(self) -> None:
        self._patches.enter_context(host_addresses(self.settings.ice_host_addresses))

    async def stop(self) -> None:
        for session_id in list(self._sessions):
            await self.end(session_id)
        self._patches.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        await self._client.close()

    # the REST side

    async def open(self, avatar_id: str) -> Session:
        if len(self._sessions) + self._opening >= self.settings.max_sessions:
            raise Backlogged(
                STAGE,
                f"this server holds {self.settings.max_sessions} live sessions, its limit "
                "(DH_MAX_SESSIONS); end one or try again later",
                retry_after_s=FULL_RETRY_AFTER_S,
            )
        self._opening += 1
        try:
            avatar = await self._avatar(avatar_id)
            model = await self._live_model()
            session = Session(
                uuid.uuid4().hex,
                avatar,
                model,
                self._pool,
                latency_s=self.settings.live_latency_s,
                max_queued_s=self.settings.live_max_queued_s,
                on_frame=self._metrics.live_frame,
                on_sent=self._metrics.live_frames_sent.inc,
            )
            try:
                await session.start()
            except BaseException:
                await session.close()
                raise
            self._sessions[session.id] = session
            self._peer_changed[session.id] = asyncio.Event()
        finally:
            self._opening -= 1
        self._watchers[session.id] = asyncio.create_task(self._watch(session))
        self._metrics.sessions.set(len(self._sessions))
        log.info("session %s opened on avatar %s", session.id, avatar_id)
        return session

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(STAGE, f"no live session with id '{session_id}' (never, or ended)")
        return session

    def list(self) -> list[Session]:
        return sorted(self._sessions.values(), key=lambda s: s.created_at, reverse=True)

    async def end(self, session_id: str) -> None:
        """Ends the session and frees everything it held (peer, tasks, frame store)."""
        session = self.get(session_id)
        del self._sessions[session_id]
        watcher = self._watchers.pop(session_id)
        if watcher is not asyncio.current_task():
            watcher.cancel()
            await asyncio.wait({watcher})
        self._peer_changed.pop(session_id, None)
        peer = self._peers.pop(session_id, None)
        if peer is not None:
            await peer.close()
        await session.close()
        self._metrics.sessions.set(len(self._sessions))
        log.info("session %s ended after %.1f s", session_id, session.seconds_live)

    async def connect(self, session_id: str, sdp: str, kind: str) -> RTCSessionDescription:
        """The answer to a browser's offer; a new offer replaces the session's peer."""
        session = self.get(session_id)
        old = self._peers.pop(session_id, None)
        if old is not None:
            await old.close()
        peer = Peer(session, self._ice, self._on_peer_state)
        self._peers[session_id] = peer
        try:
            return await peer.answer(sdp, kind)
        except BaseException:
            if self._peers.get(session_id) is peer:
                del self._peers[session_id]
            await peer.close()
            raise

    # internals

    async def _avatar(self, avatar_id: str) -> Avatar:
        record = await self._store.get_avatar(avatar_id)
        if record is None:
            raise NotFound(STAGE, f"no avatar with id '{avatar_id}'")
        if record.state == AvatarState.PREPARING:
            raise Conflict(
                STAGE, f"avatar '{avatar_id}' is not prepared yet; open the session once it is"
            )
        if record.state == AvatarState.FAILED:
            why = (record.error or {}).get("message", "no reason recorded")
            raise Conflict(STAGE, f"avatar '{avatar_id}' could not be prepared: {why}")
        await self._storage.fetch_avatar(avatar_id)
        avatar = await run_blocking(
            self._pool, load_avatar, self._storage.avatar_cache_dir(avatar_id)
        )
        if avatar is None:
            raise Conflict(STAGE, f"avatar '{avatar_id}' is not prepared on this server yet")
        return avatar

    async def _live_model(self) -> LiveModel:
        """The lipsync model as a renderer in this process checked it, or as read from
        Triton here (an API replica alone never started the engine)."""
        if self._model is None:
            try:
                served = self._engine.served
            except PipelineError:  # this role never started the engine
                served = await load_served_models(self._client, self.settings)
            self._model = LiveModel(
                self._client,
                served.lipsync.name,
                served.face_size,
                served.composite,
                frames_per_request=max(
                    1, min(self.settings.live_frames_per_request, served.lipsync.max_batch_size)
                ),
            )
        return self._model

    def _on_peer_state(self, peer: Peer, state: str) -> None:
        session_id = peer.session.id
        if self._peers.get(session_id) is not peer:
            return  # a replaced peer closing
        session = self._sessions.get(session_id)
        if session is not None and peer.gone:
            session.state = SessionState.WAITING
        changed = self._peer_changed.get(session_id)
        if changed is not None:
            changed.set()

    async def _watch(self, session: Session) -> None:
        """Ends a session that has had no connected peer for DH_LIVE_PEER_WAIT_S."""
        while True:
            changed = self._peer_changed[session.id]
            changed.clear()
            if session.state == SessionState.STREAMING:
                await changed.wait()
                continue
            try:
                await asyncio.wait_for(changed.wait(), self.settings.live_peer_wait_s)
            except TimeoutError:
                wait_s = self.settings.live_peer_wait_s
                log.info("session %s had no peer for %.0f s", session.id, wait_s)
                await self.end(session.id)
                return
