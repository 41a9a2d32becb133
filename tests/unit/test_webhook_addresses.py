"""Which addresses a webhook may reach: public ones, and the networks the operator allows."""

from __future__ import annotations

import ipaddress

import pytest

from app.config import parse_allow
from app.errors import ValidationFailed
from app.jobs.webhooks import check_callback_url, refusal, sign


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
     "::1", "fe80::1", "fd00:ec2::254", "::ffff:10.0.0.1", "::", "192.0.2.1"],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), ()) is not None


@pytest.mark.parametrize(
    "address",
    ["::127.0.0.1", "::169.254.169.254",  # IPv4-compatible
     "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1", "64:ff9b:1:a9fe:a9fe::",  # NAT64, local-use NAT64
     "2002:a9fe:a9fe::1", "2002:7f00:1::1",  # 6to4
     "::ffff:0:a9fe:a9fe",  # SIIT's IPv4-translated
     "fec0::1", "4000::1"],  # site-local; outside global unicast (2000::/3)
)  # fmt: skip
def test_ipv6_addresses_that_lead_to_a_non_public_one_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), ()) is not None


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), ()) is None


def test_the_operator_may_allow_networks() -> None:
    allow = parse_allow(" 10.0.0.0/8, fd00::/8 ,")
    assert refusal(ipaddress.ip_address("10.1.2.3"), allow) is None
    assert refusal(ipaddress.ip_address("fd00::5"), allow) is None
    assert refusal(ipaddress.ip_address("192.168.1.1"), allow) is not None
    assert refusal(ipaddress.ip_address("64:ff9b:1::a00:1"), parse_allow("64:ff9b:1::/48")) is None


@pytest.mark.parametrize("text", ["192.168.1.5/0", "10.0.0.1/8", "fd00::1/8", "10.0.0.0/8,nonsense"])
def test_a_mistyped_allowed_network_is_an_error_naming_the_setting(text: str) -> None:
    with pytest.raises(ValueError, match="RUNNER_WEBHOOK_ALLOW"):
        parse_allow(text)


def test_urls_are_checked_before_any_lookup() -> None:
    assert check_callback_url("https://hooks.example.com:8443/x?y=1") == "https://hooks.example.com:8443/x?y=1"
    for bad in ("https://10.0.0.1/x", "gopher://example.com", "https://", "http://a:b@example.com/", "x" * 3000):
        with pytest.raises(ValidationFailed):
            check_callback_url(bad)
    assert check_callback_url("http://10.0.0.1/x", parse_allow("10.0.0.0/8")) == "http://10.0.0.1/x"


def test_the_signature_covers_timestamp_and_body() -> None:
    one = sign("s", "100", b"{}")
    assert one.startswith("sha256=") and len(one) == 7 + 64
    assert one != sign("s", "101", b"{}") != sign("s", "100", b"{ }") != sign("t", "100", b"{}")
