"""Live sessions in a fleet: two `dh serve` replicas on one PostgreSQL.

A session lives on the replica that answered its POST (it holds the WebRTC peer); the
other replica answers its GET and the list from the store, ends it with a DELETE through
the store, refuses the routes only the holder can answer with 409, and reports it ended
once its holder dies. A frozen store neither ends nor stalls a session: the holder goes on
streaming and answering it, and writes its row again once the store answers.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import av
import httpx
import psycopg

from tests.api.conftest import AVATAR_FPS, ServerFactory, register_avatar
from tests.api.server import poll_until
from tests.engines import PostgresEngine
from tests.fleet.conftest import FLEET_SETTINGS, Fleet
from tests.live.client import webrtc_peer

SNAPSHOT_S = 0.5  # DH_LIVE_SNAPSHOT_S: rows written twice a second
STALE_S = 3 * SNAPSHOT_S + 2.0  # a row this old belongs to a replica that died
LIVE_SETTINGS: dict[str, object] = {
    "ice_host_addresses": ["127.0.0.1"],
    "live_latency_s": 1.0,  # the shared test machine is loaded
    "live_snapshot_s": SNAPSHOT_S,
    "live_peer_wait_s": 600.0,  # a session without a peer stays open for the whole test
}
END_WITHIN_S = 2 * SNAPSHOT_S + 2.0 + 1.0  # the DELETE's own wait, and a second to spare
# Frozen for longer than a row may go unwritten: the holder's writes fail all along.
FROZEN_S = STALE_S + 1.0


async def _poll(client: httpx.Client, path: str, done: Any, deadline_s: float, what: str) -> Any:
    """poll_until in a thread: this test's event loop keeps serving the WebRTC peer."""

    def fetch() -> tuple[int, Any]:
        reply = client.get(path)
        return reply.status_code, reply.json()

    return await asyncio.to_thread(poll_until, fetch, done, deadline_s, what)


async def test_a_session_on_one_replica_is_read_and_ended_through_the_other(
    fleet: Fleet, avatar_video: Path
) -> None:
    holder, other = fleet(2, **LIVE_SETTINGS)
    avatar_id = register_avatar(holder, avatar_video)
    path = ""
    with holder.client() as at_holder, other.client() as at_other:
        async with httpx.AsyncClient(base_url=holder.base_url, timeout=30) as http:
            opened = await http.post("/v1/sessions", json={"avatar_id": avatar_id})
            assert opened.status_code == 201, opened.text
            path = f"/v1/sessions/{opened.json()['id']}"
            waiting = at_other.get(path)
            async with webrtc_peer(http, opened.json()["id"]) as peer:
                assert isinstance(await peer.video.recv(), av.VideoFrame)
                _, streaming = await _poll(
                    at_other,
                    path,
                    lambda answer: answer[0] == 200 and answer[1]["frames_sent"] > 0,
                    10.0,
                    "frames sent, as the other replica reads them",
                )
                at_holder_now = at_holder.get(path).json()
                listed = at_other.get("/v1/sessions").json()["items"]
                interrupt = at_other.post(f"{path}/interrupt")
                offer = at_other.post(f"{path}/webrtc", json={"sdp": "v=0", "type": "offer"})

                asked = time.monotonic()
                deleted = at_other.delete(path)
                answered = time.monotonic() - asked
                _, ended = await _poll(
                    at_holder,
                    path,
                    lambda answer: answer[0] == 404,
                    END_WITHIN_S,
                    "the session ended where it lives",
                )
        after_end = at_other.get(path)
        deleted_again = at_other.delete(path)

    assert waiting.status_code == 200, waiting.text
    assert waiting.json()["state"] in ("waiting", "streaming")
    assert streaming["state"] == "streaming"
    assert streaming.keys() == at_holder_now.keys(), "the same document on either replica"
    assert (streaming["fps"], streaming["width"]) == (at_holder_now["fps"], at_holder_now["width"])
    assert streaming["links"] == at_holder_now["links"]
    assert path.rsplit("/", 1)[1] in [item["id"] for item in listed]
    assert interrupt.status_code == 409, interrupt.text
    assert "held by another replica" in interrupt.json()["error"]["message"]
    assert offer.status_code == 409, offer.text
    assert deleted.status_code == 204, deleted.text
    assert answered < END_WITHIN_S
    assert "ended" in ended["error"]["message"]
    assert after_end.status_code == 404, after_end.text
    assert deleted_again.status_code == 404


async def test_a_session_whose_replica_died_is_reported_ended_by_the_other(
    fleet: Fleet, avatar_video: Path
) -> None:
    holder, other = fleet(2, **LIVE_SETTINGS)
    avatar_id = register_avatar(holder, avatar_video)
    with holder.client() as at_holder, other.client() as at_other:
        opened = at_holder.post("/v1/sessions", json={"avatar_id": avatar_id})
        assert opened.status_code == 201, opened.text
        path = f"/v1/sessions/{opened.json()['id']}"
        alive = at_other.get(path)
        holder.kill()  # SIGKILL: its rows are never marked ended
        killed = time.monotonic()
        _, gone = await _poll(
            at_other, path, lambda answer: answer[0] == 404, STALE_S + 2.0, "reported ended"
        )
        reported_after = time.monotonic() - killed
        listed = at_other.get("/v1/sessions").json()["items"]

    assert alive.status_code == 200, alive.text
    assert "stopped reporting" in gone["error"]["message"]
    # Not before its holder could have missed writes: its last was SNAPSHOT_S ago at most.
    assert reported_after > STALE_S - SNAPSHOT_S - 0.5, reported_after
    assert listed == []


def _frames_written(database_url: str, session_id: str) -> int | None:
    """frames_sent as the session's row says (None: no row)."""
    with psycopg.connect(database_url, connect_timeout=2) as connection:
        row = connection.execute(
            "SELECT frames_sent FROM live_sessions WHERE id=%s", (session_id,)
        ).fetchone()
    return None if row is None else int(row[0])


async def test_a_frozen_store_neither_ends_nor_stalls_a_session(
    server_factory: ServerFactory, crashable_postgres: PostgresEngine, avatar_video: Path
) -> None:
    database_url = crashable_postgres.create_database()
    server = server_factory(database_url=database_url, **FLEET_SETTINGS, **LIVE_SETTINGS)
    avatar_id = register_avatar(server, avatar_video)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        opened = await http.post("/v1/sessions", json={"avatar_id": avatar_id})
        assert opened.status_code == 201, opened.text
        session_id = opened.json()["id"]
        path = f"/v1/sessions/{session_id}"
        async with webrtc_peer(http, session_id) as peer:
            assert isinstance(await peer.video.recv(), av.VideoFrame)
            before = (await http.get(path)).json()
            crashable_postgres.freeze()
            try:
                frozen_at = time.monotonic()
                frames = [await peer.video.recv() for _ in range(int(FROZEN_S * AVATAR_FPS))]
                streamed_s = time.monotonic() - frozen_at
                during = await http.get(path)
            finally:
                crashable_postgres.thaw()
            written = await asyncio.to_thread(
                poll_until,
                lambda: _frames_written(database_url, session_id),
                lambda sent: sent is not None and sent >= during.json()["frames_sent"],
                10.0,
                "the row written again once the store answers",
            )
            after = (await http.get(path)).json()

    assert all(isinstance(frame, av.VideoFrame) for frame in frames)
    # The frames came in real time (a stalled session would have held them back).
    assert streamed_s < FROZEN_S + 2.0, streamed_s
    assert during.status_code == 200, during.text
    assert during.json()["state"] == "streaming"
    assert during.json()["frames_sent"] > before["frames_sent"]
    assert written >= during.json()["frames_sent"]
    assert after["state"] == "streaming"
    log = server.log_path.read_text(errors="replace")
    assert "sessions go on, reported when it is back" in log
