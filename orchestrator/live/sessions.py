"""The sessions of this replica: opened against a prepared avatar, bounded by
DH_MAX_SESSIONS, ended by DELETE, by their peer going away, or by waiting too long for one.

A session lives in memory in the process that holds its WebRTC peer (a peer's UDP sockets
cannot move to another replica). That process also keeps the session's row in the store:
inserted on open, its stats snapshot written every DH_LIVE_SNAPSHOT_S, marked ended on
end (and all of them when the replica stops). So any replica answers a session's GET from
the row, and its DELETE by flagging `end_requested` and sending an event: the holder ends
the session on the event, or at its next write should the event be lost. A row not written
for STALE_TICKS times the interval plus STALE_MARGIN_S belongs to a replica that died: it
is reported as ended. The rest (the peer, speech, interrupt) is answered by the holder only;
another replica answers 409 (`held`).

A store outage ends and stalls no session: writes fail, are logged once, and resume when
it is back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress

from aiortc import RTCSessionDescription

from orchestrator.blocking import run_blocking
from orchestrator.errors import Backlogged, Conflict, NotFound, PipelineError
from orchestrator.jobs.leases import replica_name
from orchestrator.jobs.lifecycle import AvatarState
from orchestrator.jobs.store import (
    SESSION_END_EVENT,
    SESSION_ENDED_EVENT,
    JobStore,
    SessionRecord,
    SessionSnapshot,
    StoreUnavailable,
)
from orchestrator.live.avatar_frames import MIB, FrameCache
from orchestrator.live.frames import percentile
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
# A row not written for this many intervals (DH_LIVE_SNAPSHOT_S) plus the margin belongs
# to a replica that died: a write or two may be slow (the store's answer timeout), not three.
STALE_TICKS, STALE_MARGIN_S = 3, 2.0
# Rows (ended, or of a replica that died) are deleted this long after their last write,
# looked for every PURGE_TICKS writes.
RECORD_TTL_S, PURGE_TICKS = 3600.0, 60
MS = 1000.0
ELSEWHERE = (
    "is held by another replica (its WebRTC peer, clock and speech live there); send this "
    "to the replica that answered its POST /v1/sessions"
)


class Sessions:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        store: JobStore,
        storage: Storage,
        metrics: ServiceMetrics,
        replica: str | None = None,
    ) -> None:
        self.settings = settings
        # The holder's name in the store: the process's lease owner ("<name>#<incarnation>").
        self.replica = replica or f"{replica_name(settings)}#{uuid.uuid4().hex[:8]}"
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
        self._frames = FrameCache(settings.live_frame_cache_mb * MIB)
        self._writer: asyncio.Task[None] | None = None
        self._ended_elsewhere: dict[str, asyncio.Event] = {}  # DELETEs waiting on a holder
        self._ending: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._store_down = False

    async def start(self) -> None:
        self._patches.enter_context(host_addresses(self.settings.ice_host_addresses))
        self._store.subscribe(self._on_event)
        # A previous incarnation of this replica (same name) held no session past its end.
        try:
            if ended := await self._store.end_sessions(f"{self.replica.partition('#')[0]}#"):
                log.info("%d sessions of this replica's previous run marked ended", ended)
        except StoreUnavailable as exc:
            log.warning("could not mark the previous run's sessions ended: %s", exc.message)
        self._writer = asyncio.create_task(self._write_snapshots(), name="session-snapshots")

    async def stop(self) -> None:
        self._stopping = True
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        for session_id in list(self._sessions):
            await self.end(session_id)
        await asyncio.gather(*self._ending, return_exceptions=True)
        if self._writer is not None:  # started (a worker alone holds no session rows)
            try:  # one write for all: a frozen store delays the stop once, not per session
                await self._store.end_sessions(self.replica)
            except StoreUnavailable as exc:  # their rows go stale, which reads as ended
                log.warning("could not mark this replica's sessions ended: %s", exc.message)
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
            frames = self._frames.open(avatar)
            try:
                session = Session(
                    uuid.uuid4().hex,
                    avatar,
                    model,
                    self._pool,
                    latency_s=self.settings.live_latency_s,
                    max_queued_s=self.settings.live_max_queued_s,
                    on_frame=self._metrics.live_frame,
                    on_sent=self._metrics.live_frames_sent.inc,
                    frames=frames,
                )
            except BaseException:
                frames.close()
                raise
            try:
                # Written before the clock starts: a store that cannot take it refuses the
                # session (503) rather than hiding it from the other replicas.
                await self._store.add_session(self._record(session))
                await session.start()
            except BaseException:
                await session.close()
                with suppress(StoreUnavailable):  # else its row goes stale: ended as well
                    await self._store.refresh_session(session.id, self.replica, snapshot(session))
                raise
            self._sessions[session.id] = session
            self._peer_changed[session.id] = asyncio.Event()
        finally:
            self._opening -= 1
        self._watchers[session.id] = asyncio.create_task(self._watch(session))
        self._metrics.sessions.set(len(self._sessions))
        log.info("session %s opened on avatar %s", session.id, avatar_id)
        return session

    @property
    def frame_cache_bytes(self) -> int:
        return self._frames.used_bytes

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(STAGE, f"no live session with id '{session_id}' (never, or ended)")
        return session

    def list(self) -> list[Session]:
        return sorted(self._sessions.values(), key=lambda s: s.created_at, reverse=True)

    async def find(self, session_id: str) -> Session | SessionRecord:
        """The session if this replica holds it, else its row as the holder last wrote it;
        NotFound if there is none, or it ended (or its holder stopped writing: died)."""
        session = self._sessions.get(session_id)
        if session is not None:
            return session
        record = await self._store.get_session(session_id)
        if record is None:
            raise NotFound(STAGE, f"no live session with id '{session_id}' (never, or ended)")
        if record.snapshot.state == SessionState.ENDED:
            raise NotFound(STAGE, f"live session '{session_id}' has ended")
        if record.age_s > self.stale_s:
            raise NotFound(
                STAGE,
                f"live session '{session_id}' has ended: its replica stopped reporting it "
                f"{record.age_s:.0f} s ago",
            )
        return record

    async def list_fleet(self) -> Sequence[Session | SessionRecord]:
        """Every replica's open sessions, newest first: this replica's as they are now,
        the others' as their holders last wrote them."""
        records = await self._store.list_sessions(self.stale_s)
        found: dict[str, Session | SessionRecord] = {r.id: r for r in records}
        found.update(self._sessions)
        return sorted(found.values(), key=lambda s: s.created_at, reverse=True)

    async def held(self, session_id: str) -> Session:
        """The session, which this replica must hold: Conflict (409) if another one does
        (what it streams cannot be reached from here), NotFound if none does."""
        found = await self.find(session_id)
        if isinstance(found, SessionRecord):
            raise Conflict(STAGE, f"live session '{session_id}' {ELSEWHERE}")
        return found

    async def end_anywhere(self, session_id: str) -> bool:
        """Ends the session here, or asks the replica holding it to: True once it has
        ended, False if its holder has not confirmed within the wait (it will at its next
        write, DH_LIVE_SNAPSHOT_S at most, unless it died, which reads as ended too)."""
        if session_id in self._sessions:
            await self.end(session_id)
            return True
        await self.find(session_id)  # NotFound if it has ended already
        ended = self._ended_elsewhere.setdefault(session_id, asyncio.Event())
        try:
            if not await self._store.request_session_end(session_id):
                return True  # ended between the read and the flag
            await self._store.notify(f"{SESSION_END_EVENT}{session_id}")
            deadline = asyncio.get_running_loop().time() + self.end_wait_s
            while asyncio.get_running_loop().time() < deadline:
                # The event, or the row at each interval (events do not cross SQLite
                # processes, and one may be lost while the listener reconnects).
                try:
                    async with asyncio.timeout(self.settings.live_snapshot_s):
                        await ended.wait()
                    return True
                except TimeoutError:
                    record = await self._store.get_session(session_id)
                    if record is None or record.snapshot.state == SessionState.ENDED:
                        return True
            log.info("session %s: end requested; its replica has not ended it yet", session_id)
            return False
        finally:
            self._ended_elsewhere.pop(session_id, None)

    @property
    def stale_s(self) -> float:
        """How long a row may go unwritten before its session is taken as ended."""
        return STALE_TICKS * self.settings.live_snapshot_s + STALE_MARGIN_S

    @property
    def end_wait_s(self) -> float:
        """How long a DELETE on another replica waits for the holder to end the session:
        two of its write intervals and the margin (an event normally ends it at once)."""
        return 2 * self.settings.live_snapshot_s + STALE_MARGIN_S

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
        if not self._stopping:  # stop() marks every row ended in one write
            try:
                await self._store.refresh_session(session_id, self.replica, snapshot(session))
                await self._store.notify(f"{SESSION_ENDED_EVENT}{session_id}")
            except StoreUnavailable as exc:  # its row goes stale, which reads as ended
                log.warning("session %s: could not record its end: %s", session_id, exc.message)

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

    def _record(self, session: Session) -> SessionRecord:
        return SessionRecord(
            id=session.id,
            avatar_id=session.avatar.avatar_id,
            replica=self.replica,
            created_at=session.created_at,
            fps=float(session.fps),
            width=session.avatar.width,
            height=session.avatar.height,
            snapshot=snapshot(session),
        )

    async def _write_snapshots(self) -> None:
        """Every DH_LIVE_SNAPSHOT_S: each session's stats to its row, and an end asked
        for by another replica (should its event have been missed)."""
        ticks = 0
        while True:
            # A schedule, not a wait for state: the rows are written at a fixed rhythm.
            await asyncio.sleep(self.settings.live_snapshot_s)
            ticks += 1
            try:
                for session_id, session in list(self._sessions.items()):
                    await self._write_snapshot(session_id, session)
                if ticks % PURGE_TICKS == 0:
                    await self._store.purge_sessions(RECORD_TTL_S)
                if self._store_down:
                    log.info("the job store is back (%s); sessions are reported", self._store.where)
                self._store_down = False
            except StoreUnavailable as exc:
                if not self._store_down:
                    log.warning("%s; sessions go on, reported when it is back", exc.message)
                self._store_down = True

    async def _write_snapshot(self, session_id: str, session: Session) -> None:
        asked = await self._store.refresh_session(session_id, self.replica, snapshot(session))
        if asked is None and session_id in self._sessions:
            # The row is gone (deleted as stale during a long outage): the session is
            # alive, so it is reported again.
            log.info("session %s: its row was gone; written again", session_id)
            await self._store.add_session(self._record(session))
        elif asked:
            log.info("session %s: ended on request from another replica", session_id)
            self._end_soon(session_id)

    def _on_event(self, event: str) -> None:
        """An event from any replica (through the store)."""
        if event.startswith(SESSION_END_EVENT):
            session_id = event.removeprefix(SESSION_END_EVENT)
            if session_id in self._sessions and not self._stopping:
                self._end_soon(session_id)
        elif event.startswith(SESSION_ENDED_EVENT):
            waiter = self._ended_elsewhere.get(event.removeprefix(SESSION_ENDED_EVENT))
            if waiter is not None:
                waiter.set()

    def _end_soon(self, session_id: str) -> None:
        """Ends the session in a task of its own: the writer's tick (or the event) is not
        held up by it, and stop() waits for it."""
        task = asyncio.create_task(self._end_quietly(session_id), name=f"end-{session_id}")
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end_quietly(self, session_id: str) -> None:
        """end(), where the session may have ended meanwhile (the event and the row both
        ask for it)."""
        if session_id in self._sessions:
            with suppress(NotFound):
                await self.end(session_id)

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


def snapshot(session: Session) -> SessionSnapshot:
    """The session's state and stats as its row keeps them (rounded as GET shows them)."""
    latencies = [latency * MS for latency in session.stats.latencies_s]
    return SessionSnapshot(
        state=str(session.state),
        seconds_live=round(session.seconds_live, 3),
        frames_sent=session.stats.frames_sent,
        late_frames=session.stats.late_frames,
        speech_queued_s=round(session.speech_queued_s, 3),
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
    )
