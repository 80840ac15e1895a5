"""The outbound rule: which URLs webhooks and input fetches may use, checked on the URL and
again on the address actually connected to (a local HTTP server stands in for the world;
a fake resolver stands in for DNS)."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from orchestrator.errors import BadInput
from orchestrator.outbound import (
    OutboundRefused,
    check_url,
    fetch_policy,
    guarded_client,
    refusal,
    webhook_policy,
)
from orchestrator.settings import Settings


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd00:ec2::254", "private"),  # AWS's IPv6 metadata address
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "CGNAT"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:10.0.0.1", "private"),
    ],
)
def test_non_public_addresses_are_refused_and_say_what_they_are(address: str, kind: str) -> None:
    reason = refusal(ipaddress.ip_address(address))
    assert reason is not None and kind in reason, (address, reason)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "100.128.0.1"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://[::1/a.wav", "http://host:99999/", "http://"]
)
def test_a_malformed_url_is_bad_input_naming_the_field(url: str) -> None:
    with pytest.raises(BadInput) as caught:
        check_url(url, webhook_policy(Settings()), "webhook_url")
    assert caught.value.stage == "webhook"
    assert caught.value.message.startswith("webhook_url: ")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::1]:9000/",
        "http://localhost:8080/hook",
        "http://api.localhost/hook",
        "http://10.0.0.5/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
    ],
)
def test_by_default_webhooks_may_not_target_local_addresses_or_other_schemes(url: str) -> None:
    with pytest.raises(OutboundRefused):
        check_url(url, webhook_policy(Settings()), "webhook_url")


def test_by_default_a_webhook_may_name_any_public_host() -> None:
    check_url("https://hooks.example.com/done", webhook_policy(Settings()), "webhook_url")


def test_a_listed_host_may_be_private_and_others_are_then_refused() -> None:
    policy = webhook_policy(Settings(webhook_allowed_hosts=["127.0.0.1", "Hooks.Internal"]))
    check_url("http://127.0.0.1:8080/hook", policy, "webhook_url")
    check_url("http://hooks.internal./hook", policy, "webhook_url")
    with pytest.raises(OutboundRefused, match="not allowed"):
        check_url("https://hooks.example.com/done", policy, "webhook_url")


def test_fetches_need_a_listed_host_or_a_star_for_public_ones() -> None:
    nothing = fetch_policy(Settings())
    with pytest.raises(OutboundRefused, match="DH_URL_FETCH_ALLOWED_HOSTS: none"):
        check_url("https://media.example.com/a.wav", nothing, "audio_url")
    public = fetch_policy(Settings(url_fetch_allowed_hosts=["*"]))
    check_url("https://media.example.com/a.wav", public, "audio_url")
    with pytest.raises(OutboundRefused, match="loopback"):
        check_url("https://127.0.0.1/a.wav", public, "audio_url")


def test_fetch_schemes_never_go_beyond_http_and_https() -> None:
    policy = fetch_policy(
        Settings(url_fetch_allowed_schemes=["file", "http"], url_fetch_allowed_hosts=["*"])
    )
    with pytest.raises(OutboundRefused, match="scheme 'file'"):
        check_url("file://media.example.com/etc/passwd", policy, "audio_url")
    with pytest.raises(OutboundRefused, match="scheme 'https'"):
        check_url("https://media.example.com/a.wav", policy, "audio_url")


# Connection time: the guarded client against a real server on 127.0.0.1.


@contextmanager
def _recording_server() -> Iterator[tuple[int, list[dict[str, str]]]]:
    """A server on 127.0.0.1 that answers 200 and records each request's headers."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _resolver(answers: dict[str, list[str]], calls: list[str]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[host]

    return resolve


async def test_a_name_that_resolves_to_loopback_is_refused_before_connecting() -> None:
    calls: list[str] = []
    resolve = _resolver({"rebound.example.com": ["127.0.0.1"]}, calls)
    with _recording_server() as (port, seen):
        async with guarded_client(webhook_policy(Settings()), resolve) as client:
            url = f"http://rebound.example.com:{port}/hook"
            check_url(url, webhook_policy(Settings()), "webhook_url")  # the name alone passes
            with pytest.raises(OutboundRefused, match="resolves to a loopback address"):
                await client.get(url)
    assert seen == []
    assert calls == ["rebound.example.com"]


async def test_one_private_answer_among_public_ones_refuses_the_host() -> None:
    resolve = _resolver({"mixed.example.com": ["8.8.8.8", "169.254.169.254"]}, [])
    async with guarded_client(webhook_policy(Settings()), resolve) as client:
        with pytest.raises(OutboundRefused, match="metadata"):
            await client.get("http://mixed.example.com/hook")


async def test_a_literal_private_address_is_refused_at_connection_too() -> None:
    with _recording_server() as (port, seen):
        async with guarded_client(webhook_policy(Settings())) as client:
            with pytest.raises(OutboundRefused, match="loopback"):
                await client.get(f"http://127.0.0.1:{port}/hook")
    assert seen == []


async def test_a_listed_host_connects_to_the_address_it_resolved_to_and_keeps_its_name() -> None:
    calls: list[str] = []
    resolve = _resolver({"receiver.internal": ["127.0.0.1"]}, calls)
    policy = webhook_policy(Settings(webhook_allowed_hosts=["receiver.internal"]))
    with _recording_server() as (port, seen):
        async with guarded_client(policy, resolve) as client:
            reply = await client.get(f"http://receiver.internal:{port}/hook")
    assert reply.status_code == 200 and reply.text == "ok"
    assert calls == ["receiver.internal"]  # resolved once, by the guard
    assert seen[0]["Host"] == f"receiver.internal:{port}"


async def test_a_closed_port_on_a_listed_host_is_httpx_connect_error() -> None:
    policy = webhook_policy(Settings(webhook_allowed_hosts=["127.0.0.1"]))
    with _recording_server() as (port, _):
        pass  # closed when the block ends: nothing listens there any more
    async with guarded_client(policy) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/hook")
