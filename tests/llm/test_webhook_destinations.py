"""Where a webhook may go (SSRF): every resolved address must be public, IPv6 forms that
embed an IPv4 address are judged by it, and the request is aimed at the vetted address
with the name kept for Host and TLS. DNS is played by an injected resolver."""

from __future__ import annotations

import ipaddress

import pytest

from llm.services.webhooks import _Refused, is_public_address, pin_destination


class ScriptedResolver:
    """DNS as an attacker runs it: a different answer on each lookup."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_https_keeps_the_name_for_tls_sni_and_certificate_checks(settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    pinned = pin_destination("https://hooks.customer.test/in", resolve=lambda host, port: ["2606:4700::1111"])
    assert pinned.url == "https://[2606:4700::1111]/in"
    assert pinned.headers == {"Host": "hooks.customer.test"}
    assert pinned.extensions == {"sni_hostname": "hooks.customer.test"}


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.5",
        "169.254.169.254",
        "100.64.0.1",
        "::1",
        "fe80::1%eth0",
        "fd00::1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
        "64:ff9b:1::a00:5",  # local-use NAT64 prefix
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:5::1",  # 6to4 of 10.0.0.5
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.5",
        "::127.0.0.1",  # IPv4-compatible
    ],
)
def test_private_and_embedded_private_addresses_are_refused(address: str, settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    assert not is_public_address(ipaddress.ip_address(address.split("%")[0]))
    with pytest.raises(_Refused):
        pin_destination("https://hooks.customer.test/in", resolve=lambda host, port: [address])


def test_one_private_answer_among_public_ones_is_refused(settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(_Refused):
        pin_destination("http://hooks.customer.test/", resolve=lambda host, port: ["8.8.8.8", "64:ff9b::a00:1"])


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "64:ff9b::808:808", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


def test_an_international_name_is_resolved_and_sent_in_its_ascii_form(settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    resolver = ScriptedResolver(["8.8.8.8"])
    pinned = pin_destination("https://bücher.example/in", resolve=resolver)
    assert resolver.calls == ["xn--bcher-kva.example"]
    assert pinned.headers == {"Host": "xn--bcher-kva.example"}
    assert pinned.extensions == {"sni_hostname": "xn--bcher-kva.example"}


@pytest.mark.parametrize("url", ["http://hooks.example.com:99999/", "ftp://hooks.example.com/", "http:///nohost"])
def test_a_malformed_callback_is_refused_not_retried(url: str) -> None:
    with pytest.raises(_Refused):
        pin_destination(url, resolve=lambda host, port: ["8.8.8.8"])


def test_an_ip_literal_callback_is_vetted_without_dns(settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False

    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("an IP literal needs no lookup")

    with pytest.raises(_Refused):
        pin_destination("http://[64:ff9b::7f00:1]:8080/", resolve=no_dns)
    assert pin_destination("http://8.8.8.8/x", resolve=no_dns).headers == {"Host": "8.8.8.8"}


@pytest.mark.parametrize("address", ["2002:808:808::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2"])
def test_tunnel_prefixes_are_refused_whatever_they_embed(address: str) -> None:
    """6to4 and Teredo are relays to somewhere else; no receiver needs them."""
    assert not is_public_address(ipaddress.ip_address(address))
