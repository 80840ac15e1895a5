"""One live session: a clock at the avatar's frame rate, a speech timeline, a frame loop.

Two tasks run on the session's one clock (`loop.time()` at start plus frame times):
- the planner starts the work of a few consecutive frames (frames.group_size, up to
  DH_LIVE_FRAMES_PER_REQUEST) as soon as the last one's audio is final (frames.final_at):
  a read of each frame's avatar picture (ping-pong walk) and, for those whose mel window
  speech reaches, one small lipsync request through the shared Triton client (Triton's
  dynamic batcher merges the sessions' requests), then each frame's composite on the
  shared pool;
- the emitter publishes frame i at exactly its time: the lip-synced frame when it is done,
  else the idle frame and a late count. Times come from the clock, never from counting
  sleeps, so a session that cannot keep up shows idle frames and never drifts.

The video and audio tracks (tracks.py) read what the emitter publishes and the timeline,
stamped from the same clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import Any

import numpy as np

from orchestrator.blocking import run_blocking
from orchestrator.errors import Backlogged, NotFound
from orchestrator.live import frames as live
from orchestrator.live.avatar_frames import AvatarFrames, FrameCache, FramesClosed
from orchestrator.live.speech import KEEP_BEHIND_S, Timeline
from orchestrator.pipeline.avatar_cache import Avatar
from orchestrator.pipeline.composite import CompositeMode, composite_frame
from orchestrator.pipeline.drive import output_fps
from orchestrator.pipeline.infer import face_crop, face_stack, pred_to_crops
from orchestrator.pipeline.mel import SAMPLE_RATE
from orchestrator.triton import TritonClient

log = logging.getLogger(__name__)
STAGE = "session"
# Render latencies kept for the p50/p95 a session reports.
LATENCY_SAMPLES = 500
# The clock starts this long after the session is opened: frame 0 is planned at once (its
# audio is final from the start) and needs a moment for its avatar frame to be read.
START_LEAD_S = 0.1
# A frame is still shown when the event loop gets to it this long after its time, and the
# frames after it follow at once: two frame periods at 25 fps, jitter a receiver's buffer
# absorbs. Skipping instead turned every stall of the loop over one frame period (40 ms at
# 25 fps, seen under load) into a lost frame and a late count, with no later frame gained.
CATCH_UP_S = 0.08


class SessionState(StrEnum):
    WAITING = "waiting"  # created; no WebRTC peer connected (yet, or any more)
    STREAMING = "streaming"  # a peer is connected
    ENDED = "ended"


class SessionEnded(NotFound):
    """The session ended while something used it (a track, a speech writer): 404."""

    def __init__(self, session_id: str) -> None:
        super().__init__(STAGE, f"live session '{session_id}' has ended")


@dataclass(frozen=True)
class LiveModel:
    """The lipsync model as sessions use it (models.ServedModels)."""

    client: TritonClient
    name: str
    face_size: int
    composite: CompositeMode
    # Frames one lipsync request carries at most (DH_LIVE_FRAMES_PER_REQUEST, within the
    # model's max_batch_size).
    frames_per_request: int = 1


@dataclass
class _Planned:
    generation: int
    idle: asyncio.Future[np.ndarray]
    speech: asyncio.Task[tuple[np.ndarray, float]] | None


@dataclass(frozen=True)
class _Spoken:
    """A frame of a group that speech reaches: what its lipsync request needs."""

    index: int
    idle: asyncio.Future[np.ndarray]
    box: tuple[int, int, int, int]
    segment: np.ndarray


@dataclass(frozen=True)
class _Prediction:
    """A group's lipsync answer: by frame index, its frame composited."""

    rows: dict[int, np.ndarray]
    started: float


@dataclass
class SessionStats:
    frames_sent: int = 0
    late_frames: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))


class Session:
    def __init__(
        self,
        session_id: str,
        avatar: Avatar,
        model: LiveModel,
        pool: Executor,
        *,
        latency_s: float,
        max_queued_s: float,
        on_frame: Callable[[bool, float | None], None] | None = None,
        on_sent: Callable[[], None] | None = None,
        frames: AvatarFrames | None = None,
    ) -> None:
        self.id = session_id
        self.avatar = avatar
        self.fps: Fraction = output_fps(avatar.fps, None)
        self.created_at = time.time()
        self.state = SessionState.WAITING
        self.stats = SessionStats()
        self._model = model
        self._pool = pool
        self._latency_s = latency_s
        self._max_queued = int(max_queued_s * SAMPLE_RATE)
        self._on_frame = on_frame or (lambda late, latency: None)
        self._on_sent = on_sent or (lambda: None)
        # The avatar's pictures (Sessions shares them between sessions; alone, uncached).
        self._frames = frames or FrameCache(0).open(avatar)
        self._timeline = Timeline(latency_s + max_queued_s + 2 * KEEP_BEHIND_S)
        self._generation = 0  # bumped by interrupt: work planned before it is dropped
        self._planned: dict[int, _Planned] = {}
        self._requests: set[asyncio.Task[_Prediction]] = set()  # lipsync requests running
        self._next_due = 0  # the next frame the emitter publishes
        self._published = asyncio.Event()
        # The newest frames published, oldest first: as many as the emitter publishes at
        # once when it catches up (CATCH_UP_S of frames and the one due), read in turn.
        kept = math.ceil(CATCH_UP_S * self.fps) + 1
        self._recent: deque[tuple[int, np.ndarray]] = deque(maxlen=kept)
        self._room = asyncio.Event()  # set whenever speech has played (room in the queue)
        self._start = 0.0
        self._fallback: np.ndarray | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ended = asyncio.Event()
        # Lipsync failing since this frame (None: it works), and frames failed since.
        self._failing_since: int | None = None
        self._failed_frames = 0

    # clock

    async def start(self) -> None:
        """Reads the first avatar frame (what a peer sees should a frame ever be missing)
        and starts the clock, a moment ahead so that frame 0's work is done in time."""
        self._fallback = await run_blocking(self._pool, self._read, 0)
        loop = asyncio.get_running_loop()
        self._start = loop.time() + START_LEAD_S
        self._tasks = [
            asyncio.create_task(self._plan(), name=f"session-{self.id}-plan"),
            asyncio.create_task(self._emit(), name=f"session-{self.id}-emit"),
        ]

    def now(self) -> float:
        """Seconds on the session's clock."""
        return asyncio.get_running_loop().time() - self._start

    def position(self) -> int:
        """The sample playing now (0 until the clock starts: see START_LEAD_S)."""
        return max(0, int(self.now() * SAMPLE_RATE))

    async def until(self, seconds: float) -> None:
        """Returns at `seconds` on the session's clock (at once if past)."""
        await asyncio.sleep(max(0.0, seconds - self.now()))

    @property
    def seconds_live(self) -> float:
        return max(0.0, self.now()) if self._start else 0.0

    # speech

    def queue_speech(self, samples: np.ndarray) -> None:
        """Queues 16 kHz speech after what is queued, and never sooner than the latency
        from now; Backlogged when it would hold more than the bound ahead."""
        self._check_open()
        now = self.position()
        at = max(self._timeline.end, now + int(self._latency_s * SAMPLE_RATE))
        if at + samples.size - now > self._max_queued + int(self._latency_s * SAMPLE_RATE):
            free = max(0.0, (self._max_queued - self.queued_samples()) / SAMPLE_RATE)
            raise Backlogged(
                STAGE,
                f"{samples.size / SAMPLE_RATE:.1f} s of speech would queue more than "
                f"DH_LIVE_MAX_QUEUED_S; {free:.1f} s free now: send in real time",
                retry_after_s=max(1, int(samples.size / SAMPLE_RATE - free) + 1),
            )
        self._timeline.write(samples, at)

    @property
    def max_queued_samples(self) -> int:
        return self._max_queued

    def queued_samples(self) -> int:
        return max(0, self._timeline.end - self.position())

    @property
    def speech_queued_s(self) -> float:
        return self.queued_samples() / SAMPLE_RATE

    async def wait_for_room(self, samples: int) -> None:
        """Back-pressure: returns once `samples` more fit in the queue."""
        while self.queued_samples() + samples > self._max_queued:
            self._check_open()
            self._room.clear()
            await self._room.wait()

    def interrupt(self) -> None:
        """Barge-in: queued speech is dropped from now on; frames planned with it show the
        avatar's own frames instead."""
        self._check_open()
        self._timeline.truncate(self.position())
        self._generation += 1

    def audio(self, start: int, count: int) -> np.ndarray:
        """The session's audio: `count` samples from position `start` (silence where none)."""
        return self._timeline.read(start, count)

    # video

    async def next_frame(self, after: int) -> tuple[int, np.ndarray]:
        """The first frame published after frame `after` that is still kept (waits for one):
        frames published together as the emitter catches up are each read in turn; a reader
        further behind than those skips ahead."""
        while not self._recent or self._recent[-1][0] <= after:
            self._check_open()
            published = self._published
            await published.wait()
        return next(frame for frame in self._recent if frame[0] > after)

    def sent(self) -> None:
        """A track handed frame to its peer."""
        self.stats.frames_sent += 1
        self._on_sent()

    def _check_open(self) -> None:
        if self.state == SessionState.ENDED:
            raise SessionEnded(self.id)

    # the frame loop

    async def _plan(self) -> None:
        index = 0
        per_request = self._model.frames_per_request
        while True:
            # A starved loop may wake the emitter first: frames it already passed are not
            # planned (nobody would take them).
            index = max(index, self._next_due)
            size = live.group_size(index, per_request, self.fps, self._latency_s)
            await self.until(live.final_at(index + size - 1, self.fps, self._latency_s))
            if index < self._next_due:
                continue  # passed while waiting: the group starts where the emitter is
            self._plan_group(index, size)
            index += size

    def _plan_group(self, first: int, size: int) -> None:
        """Plans frames first..first+size-1, whose audio is final: each one's avatar read,
        and one lipsync request for those that speech reaches."""
        spoken: list[_Spoken] = []
        for index in range(first, first + size):
            source = live.avatar_index(index, self.avatar.frame_count)
            idle = self._picture(source)
            self._planned[index] = _Planned(self._generation, idle, None)
            box = live.face_box(self.avatar.boxes, source)
            start, end = live.window_span(index, self.fps)
            if box is not None and self._timeline.has_speech(start, end):
                spoken.append(_Spoken(index, idle, box, self._timeline.read(start, end - start)))
        if not spoken:
            return
        request = asyncio.create_task(self._lipsync(spoken))
        self._requests.add(request)
        request.add_done_callback(self._requests.discard)
        remaining = len(spoken)

        def release(_: object) -> None:
            # The request lives while a frame of its group may still show its answer: once
            # every one is done, dropped or interrupted, nobody would take it.
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                request.cancel()

        for frame in spoken:
            speech = asyncio.create_task(self._generated(request, frame))
            speech.add_done_callback(release)
            self._planned[frame.index].speech = speech

    def _picture(self, index: int) -> asyncio.Future[np.ndarray]:
        """Avatar picture `index`: at once when cached, else read on the pool."""
        cached = self._frames.cached(index)
        if cached is None:
            return asyncio.ensure_future(run_blocking(self._pool, self._read, index))
        done = asyncio.get_running_loop().create_future()
        done.set_result(cached)
        return done

    def _read(self, index: int) -> np.ndarray:
        self._check_open()
        try:
            return self._frames.read(index)
        except FramesClosed:  # close() came while this read waited for a thread
            raise SessionEnded(self.id) from None

    async def _lipsync(self, group: list[_Spoken]) -> _Prediction:
        """One lipsync request for the group's frames whose pictures were read."""
        started = asyncio.get_running_loop().time()
        # asyncio.wait, not gather: a frame the emitter took before its picture was read has
        # that read cancelled, and the request goes on for its neighbours without it.
        await asyncio.wait([frame.idle for frame in group])
        read = [f for f in group if not f.idle.cancelled() and f.idle.exception() is None]
        if not read:
            return _Prediction({}, started)
        frames = [frame.idle.result() for frame in read]
        boxes = [frame.box for frame in read]
        segments = [frame.segment for frame in read]
        size = self._model.face_size
        mel, face, given = await run_blocking(self._pool, _inputs, frames, boxes, segments, size)
        result = await self._model.client.infer(
            self._model.name, {"mel": mel, "face": face}, ["pred"]
        )
        # The group's composites in one trip to the pool: a trip per frame cost more in
        # thread wake-ups than the composite itself.
        composited = await run_blocking(
            self._pool, _composite, frames, boxes, result["pred"], given, self._model.composite
        )
        rows = {frame.index: picture for frame, picture in zip(read, composited, strict=True)}
        return _Prediction(rows, started)

    async def _generated(
        self, request: asyncio.Task[_Prediction], frame: _Spoken
    ) -> tuple[np.ndarray, float]:
        """The frame composited from its group's request, with the time since the group's
        work started. Shielded: a frame dropped does not cancel its neighbours' request."""
        prediction = await asyncio.shield(request)
        row = prediction.rows.get(frame.index)
        if row is None:
            # Its picture was never read: the emitter took the frame first, or the read failed.
            failure = None if frame.idle.cancelled() else frame.idle.exception()
            raise failure or asyncio.CancelledError()
        return row, asyncio.get_running_loop().time() - prediction.started

    async def _emit(self) -> None:
        index = 0
        while True:
            await self.until(live.due_at(index, self.fps))
            # A loop that was busy past a frame's time still shows the frame, up to
            # CATCH_UP_S late (its timestamp keeps it on the clock; the next ones follow at
            # once); frames further behind are skipped, so the video never falls behind.
            while live.due_at(index, self.fps) < self.now() - CATCH_UP_S:
                self._drop(index)
                index += 1
            self._publish(index, self._take(index))
            self._timeline.forget_before(self.position() - int(KEEP_BEHIND_S * SAMPLE_RATE))
            self._room.set()
            index = self._next_due = index + 1

    def _take(self, index: int) -> np.ndarray:
        planned = self._planned.pop(index, None)
        fallback = self._recent[-1][1] if self._recent else self._fallback
        if planned is None:
            self._count(late=True, latency=None)
            assert fallback is not None  # start() read it
            return fallback
        speech, idle = planned.speech, planned.idle
        if speech is not None and planned.generation == self._generation:
            if speech.done() and not speech.cancelled():
                failure = speech.exception()
                if failure is None:
                    generated, latency = speech.result()
                    self.stats.latencies_s.append(latency)
                    self._count(late=False, latency=latency)
                    self._lipsync_works(index)
                    return generated
                # A failed request shows the idle frame; the next frames try again.
                self._lipsync_failed(index, failure)
            self._count(late=True, latency=None)
        if speech is not None:
            speech.cancel()
        if idle.done() and not idle.cancelled() and idle.exception() is None:
            return idle.result()
        idle.cancel()
        assert fallback is not None
        return fallback

    def _lipsync_failed(self, index: int, failure: BaseException) -> None:
        # Logged when failing starts and when it ends: once a frame would be 25 lines a
        # second per session for as long as Triton is away.
        self._failed_frames += 1
        if self._failing_since is None:
            self._failing_since = index
            log.warning(
                "session %s: lipsync failing from frame %d, showing the avatar's own frames "
                "until it works again: %s",
                self.id,
                index,
                failure,
            )

    def _lipsync_works(self, index: int) -> None:
        if self._failing_since is not None:
            log.info(
                "session %s: lipsync works again at frame %d after %d failed frames",
                self.id,
                index,
                self._failed_frames,
            )
            self._failing_since, self._failed_frames = None, 0

    def _drop(self, index: int) -> None:
        planned = self._planned.pop(index, None)
        if planned is not None:
            planned.idle.cancel()
            if planned.speech is not None:
                planned.speech.cancel()
        self._count(late=True, latency=None)

    def _count(self, *, late: bool, latency: float | None) -> None:
        if late:
            self.stats.late_frames += 1
        self._on_frame(late, latency)

    def _publish(self, index: int, frame: np.ndarray) -> None:
        self._recent.append((index, frame))
        published, self._published = self._published, asyncio.Event()
        published.set()

    # end

    async def wait_ended(self) -> None:
        await self._ended.wait()

    async def close(self) -> None:
        """Stops the clock and every task of the session; its tracks end."""
        if self.state == SessionState.ENDED:
            return
        self.state = SessionState.ENDED
        for task in self._tasks:
            task.cancel()
        for planned in self._planned.values():
            planned.idle.cancel()
            if planned.speech is not None:
                planned.speech.cancel()
        for request in self._requests:
            request.cancel()
        pending: list[asyncio.Future[Any]] = [*self._tasks, *self._requests]
        pending += [p.idle for p in self._planned.values()]
        pending += [p.speech for p in self._planned.values() if p.speech is not None]
        self._planned.clear()
        if pending:
            await asyncio.wait(pending)
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("session %s: %s", self.id, task.exception())
        # Wake whoever waits for a frame, for room or for the end: the session ended.
        self._published.set()
        self._room.set()
        self._ended.set()
        with contextlib.suppress(OSError):
            await run_blocking(self._pool, self._frames.close)


def _inputs(
    frames: list[np.ndarray],
    boxes: list[tuple[int, int, int, int]],
    segments: list[np.ndarray],
    size: int,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A group's lipsync inputs ([B, 1, 80, 16] mel, [B, 6, S, S] face) and its crops."""
    mel = np.stack([live.frame_mel_window(segment)[None] for segment in segments])
    face = np.stack(
        [face_stack(frame, box, size) for frame, box in zip(frames, boxes, strict=True)]
    )
    given = [face_crop(frame, box, size) for frame, box in zip(frames, boxes, strict=True)]
    return mel.astype(np.float32), face, given


def _composite(
    frames: list[np.ndarray],
    boxes: list[tuple[int, int, int, int]],
    pred: np.ndarray,
    given: list[np.ndarray],
    mode: CompositeMode,
) -> list[np.ndarray]:
    """Each frame of a group with its generated face (`pred` [B, 3, S, S], in order)."""
    crops = pred_to_crops(pred)
    return [
        composite_frame(frame, box, crop, crop_given, mode)
        for frame, box, crop, crop_given in zip(frames, boxes, crops, given, strict=True)
    ]
