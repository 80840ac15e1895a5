"""DH_TRITON_URL: the forms gRPC balances over, and one clear start-up line for the rest."""

from __future__ import annotations

import json

import pytest

from orchestrator.errors import BadInput
from orchestrator.triton import _channel_args
from orchestrator.triton_url import parse_triton_url


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8001", "triton:8001", "localhost:8001", "[::1]:8001", "triton.internal.:1"]
)
def test_one_host_and_port_is_dialled_as_written(url: str) -> None:
    target = parse_triton_url(url)
    assert target.target == url
    assert not target.several


def test_a_dns_name_target_is_every_address_of_the_name() -> None:
    url = "dns:///triton-headless.digital-human.svc.cluster.local:8001"
    target = parse_triton_url(url)
    assert target.target == url
    assert target.addresses == ("triton-headless.digital-human.svc.cluster.local:8001",)
    assert target.several


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("10.0.0.1:8001,10.0.0.2:8001", "ipv4:10.0.0.1:8001,10.0.0.2:8001"),
        ("10.0.0.1:8001, 10.0.0.2:8002 ", "ipv4:10.0.0.1:8001,10.0.0.2:8002"),
        ("[::1]:8001,[fd00::2]:8001", "ipv6:[::1]:8001,[fd00::2]:8001"),
        ("ipv4:10.0.0.1:8001,10.0.0.2:8001", "ipv4:10.0.0.1:8001,10.0.0.2:8001"),
    ],
)
def test_a_list_of_addresses_becomes_grpcs_multi_address_target(url: str, target: str) -> None:
    parsed = parse_triton_url(url)
    assert parsed.target == target
    assert len(parsed.addresses) == 2 and parsed.several


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "empty"),
        ("triton", "no port"),
        ("triton:0", "no valid port"),
        ("triton:http", "no valid port"),
        ("http://triton:8001", "'http:' is not a target"),
        ("unix:/run/triton.sock", "'unix:' is not a target"),
        ("triton-1:8001,triton-2:8001", "use dns:///name:port"),
        ("10.0.0.1:8001,[::1]:8001", "not both"),
        ("ipv6:10.0.0.1:8001", "not both"),
        ("10.0.0.1:8001,", "empty entry"),
        ("dns:triton:8001", "dns:///name:port"),
        ("::1:8001", "neither a host name nor an IP address"),
        ("tri ton:8001", "white space"),
        ("under_score:8001", "neither a host name"),
    ],
)
def test_a_malformed_value_is_one_start_up_line_naming_the_setting(url: str, why: str) -> None:
    with pytest.raises(BadInput) as caught:
        parse_triton_url(url)
    assert caught.value.stage == "startup"
    assert caught.value.message.startswith(f"DH_TRITON_URL={url!r}: ")
    assert why in caught.value.message
    assert "expected host:port, dns:///name:port" in caught.value.message


def test_the_channel_balances_with_grpcs_own_round_robin() -> None:
    args = dict(_channel_args())
    config = json.loads(args["grpc.service_config"])
    assert config == {"loadBalancingConfig": [{"round_robin": {}}]}
    # No gRPC retryPolicy: TritonClient._call retries UNAVAILABLE itself (orchestrator.triton).
    assert "methodConfig" not in config
