"""Webhook parts without a database: signatures, the address policy, sealed secrets."""

from __future__ import annotations

import ipaddress
import time

import pytest

from handlers import destinations, webhook_secrets
from handlers.destinations import AddressRefused, AllowList
from handlers.send_webhook import encode, sign
from handlers.webhook_secrets import SecretBox
from runner.errors import ConfigurationError, InvalidArguments, RunnerError
from tests.support.receiver import verify

EVENT = {
    "id": "0b5d3c1e-7f1a-4c55-9a55-2f4f1e3b9d10",
    "type": "api_key.rotated",
    "project_id": 7,
    "data": {"old_key_id": 1, "new_key_id": 2},
}


def test_the_signature_verifies_with_the_secret_only():
    secret = webhook_secrets.new_secret()
    body = encode(EVENT)
    header = sign(secret, int(time.time()), body)
    assert verify(secret, header, body)
    assert not verify(webhook_secrets.new_secret(), header, body)
    assert not verify(secret, header, body + b" ")


def test_an_old_signature_is_refused_by_the_receiver():
    secret = webhook_secrets.new_secret()
    body = encode(EVENT)
    assert not verify(secret, sign(secret, int(time.time()) - 3600, body), body)


def test_the_body_does_not_depend_on_key_order():
    shuffled = dict(reversed(list(EVENT.items())))
    assert encode(shuffled) == encode(EVENT)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "2002:a00:1::",
    ],
)
def test_inside_addresses_are_not_public(address):
    assert not destinations.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111"])
def test_public_addresses_are_public(address):
    assert destinations.is_public(ipaddress.ip_address(address))


# The URLs below name IP addresses, which resolve without a query and are never
# connected to: only the policy runs.
def test_a_private_address_is_refused_without_the_allow_list():
    with pytest.raises(
        AddressRefused, match=r"address 10\.0\.0\.1 is not a public address"
    ):
        destinations.check("http://10.0.0.1/hook", AllowList())


def test_the_allow_list_permits_networks_and_host_names():
    allowed = destinations.check(
        "http://10.0.0.1:8080/hook", AllowList.parse("192.168.0.0/16, 10.0.0.0/8")
    )
    (address,) = allowed.addresses
    assert address == ipaddress.ip_address("10.0.0.1")
    assert str(allowed.pinned_url(address)) == "http://10.0.0.1:8080/hook"
    local = destinations.check("http://localhost:9/", AllowList.parse("localhost"))
    assert all(a.is_loopback for a in local.addresses)
    assert local.host == "localhost"
    with pytest.raises(
        AddressRefused, match=r"host localhost resolves to 127\.0\.0\.1"
    ):
        destinations.check("http://localhost:9/", AllowList.parse("10.0.0.0/8"))


def test_other_forms_of_loopback_are_refused():
    for url in ("http://2130706433/", "http://0x7f.1/", "http://[::ffff:127.0.0.1]/"):
        with pytest.raises(AddressRefused):
            destinations.check(url, AllowList())


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("https://user:pass@example.com/", "user name or password"),
        ("https:///path", "name a host"),
        ("http://127.0.0.1:84324/wrapped", "port 84324 is not a TCP port"),
        ("http://example.com:0/", "port 0 is not a TCP port"),
    ],
)
def test_only_plain_http_urls_are_accepted(url, why):
    with pytest.raises(AddressRefused, match=why):
        destinations.check(url, AllowList())


def test_a_bad_allow_list_entry_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="RUNNER_WEBHOOK_ALLOW"):
        AllowList.parse("10.0.0.0/33")


def test_a_sealed_secret_opens_only_for_its_own_webhook():
    box = SecretBox(b"k" * 32)
    secret = webhook_secrets.new_secret()
    context = webhook_secrets.context(1, 7, "https://example.com/hook")
    sealed = box.seal(secret, context)
    assert secret.encode() not in sealed
    assert box.open(sealed, context) == secret
    for other in (
        webhook_secrets.context(2, 7, "https://example.com/hook"),
        webhook_secrets.context(1, 8, "https://example.com/hook"),
        webhook_secrets.context(1, 7, "https://example.com/other"),
    ):
        with pytest.raises(RunnerError, match="does not open"):
            box.open(sealed, other)
    with pytest.raises(RunnerError, match="does not open"):
        SecretBox(b"x" * 32).open(sealed, context)


def test_the_key_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("RUNNER_WEBHOOK_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="runner webhooks new-key"):
        SecretBox.from_env()
    monkeypatch.setenv("RUNNER_WEBHOOK_KEY", "too short")
    with pytest.raises(ConfigurationError, match="32 bytes"):
        SecretBox.from_env()
    monkeypatch.setenv("RUNNER_WEBHOOK_KEY", webhook_secrets.new_key())
    SecretBox.from_env()


def test_secrets_given_by_users_must_be_strong():
    with pytest.raises(InvalidArguments, match="at least 32"):
        webhook_secrets.check_secret("hunter2")
    with pytest.raises(InvalidArguments, match="printable"):
        webhook_secrets.check_secret("a secret with spaces in it, long enough")
    webhook_secrets.check_secret(webhook_secrets.new_secret())
    fingerprint = webhook_secrets.fingerprint("s" * 40)
    assert fingerprint.startswith("sha256:") and len(fingerprint) == 19
