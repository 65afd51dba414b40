"""The fetch policy in this process, through the same urllib opener img2dataset uses in the
workers: addresses are refused before any connect, every redirect hop is checked, bodies
and fetch time are capped. A socket audit hook proves that no connect to a non-loopback
address is ever attempted, even for targets such as 169.254.169.254 and 10.0.0.8."""

from __future__ import annotations

import ipaddress
import sys
import urllib.request

import pytest

from curate.download.precheck import AddressPolicy, check_url, is_public_address
from curate.download.safe_fetch import FetchPolicy, FetchRefused, build_opener, declared_pixels_refusal, verified_reason
from curate.synth.http_server import CorpusServer, Route
from hostile import CANARY_HOST, MAX_BODY, MAX_PIXELS, StreamServer, png_declaring

_guard = {"on": False, "attempts": []}


def _audit(event: str, args) -> None:
    # Records (and stops) any connect to a non-loopback address while a test is guarded.
    if event == "socket.connect" and _guard["on"]:
        host = args[1][0] if isinstance(args[1], tuple) else None
        if host is not None and not ipaddress.ip_address(host).is_loopback:
            _guard["attempts"].append(host)
            raise RuntimeError(f"test tried to connect to {host}")


sys.addaudithook(_audit)


@pytest.fixture
def no_traffic_off_loopback():
    _guard["on"], _guard["attempts"] = True, []
    yield
    _guard["on"] = False
    assert _guard["attempts"] == [], "a connect to a non-loopback address was attempted"


@pytest.fixture(scope="module")
def servers():
    canary = StreamServer(CANARY_HOST)
    streams = StreamServer()
    routes = {
        "/ok.jpg": Route(b"\xff\xd8 image bytes"),
        "/big.jpg": Route(b"x" * (MAX_BODY + 1)),
        "/to-meta": Route(status=302, redirect_to="http://169.254.169.254/latest/meta-data/"),
        "/to-ten": Route(status=301, redirect_to="http://10.0.0.8/x.jpg"),
        "/to-canary": Route(status=307, redirect_to=canary.url("/endless-redirected")),
        "/to-meta-name": Route(status=302, redirect_to="http://metadata.test/latest"),
        "/to-ftp": Route(status=302, redirect_to="ftp://example.com/a.jpg"),
        "/loop": Route(status=302, redirect_to="/loop"),
        **{f"/chain/{i}": Route(status=302, redirect_to=f"/chain/{i + 1}") for i in range(10)},
    }
    with CorpusServer(routes) as files:
        yield files, streams, canary
    streams.close()
    canary.close()


def _policy(**overrides) -> FetchPolicy:
    resolve = (("images.test", "127.0.0.1"), ("internal.test", CANARY_HOST), ("metadata.test", "169.254.169.254"),
               ("ten.test", "10.0.0.8"), ("cgnat.test", "100.64.0.1"))
    base = dict(addresses=AddressPolicy(False, ("127.0.0.1/32",)), resolve=resolve, max_body_bytes=MAX_BODY,
                max_fetch_seconds=2.0, max_redirects=3)
    return FetchPolicy(**{**base, **overrides})


def _fetch(url: str, policy: FetchPolicy) -> bytes:
    with build_opener(policy).open(urllib.request.Request(url), timeout=2) as response:
        return response.read()


def _refusal(url: str, policy: FetchPolicy) -> str:
    with pytest.raises(Exception) as caught:
        _fetch(url, policy)
    error = caught.value
    error = getattr(error, "reason", error) if not isinstance(error, FetchRefused) else error
    assert isinstance(error, FetchRefused), repr(caught.value)
    return error.reason


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "::1", "fe80::1", "fc00::1",
     "ff0e::1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:a00:1::"],
)
def test_non_public_addresses_are_refused(address):
    assert not is_public_address(ipaddress.ip_address(address))
    assert not AddressPolicy().allows(ipaddress.ip_address(address))
    assert AddressPolicy(allow_all=True).allows(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_pass(address):
    assert is_public_address(ipaddress.ip_address(address))


def test_allowed_networks_open_only_their_range():
    policy = AddressPolicy(False, ("127.0.0.1/32", "10.5.0.0/16"))
    assert policy.allows(ipaddress.ip_address("127.0.0.1")) and policy.allows(ipaddress.ip_address("10.5.9.9"))
    assert not policy.allows(ipaddress.ip_address("127.0.0.2")) and not policy.allows(ipaddress.ip_address("10.6.0.1"))
    assert check_url("http://127.0.0.1:8/a.jpg", False, ("127.0.0.1/32",)) is None
    assert check_url("http://127.0.0.2:8/a.jpg", False, ("127.0.0.1/32",)) == "private_host:127.0.0.2"


def test_allowed_server_is_fetched_by_address_and_by_name(servers, no_traffic_off_loopback):
    files, _, _ = servers
    assert _fetch(files.url("/ok.jpg"), _policy()) == b"\xff\xd8 image bytes"
    assert _fetch(files.url("/ok.jpg").replace("127.0.0.1", "images.test"), _policy()) == b"\xff\xd8 image bytes"


@pytest.mark.parametrize(
    "host,address", [("internal.test", CANARY_HOST), ("metadata.test", "169.254.169.254"),
                     ("ten.test", "10.0.0.8"), ("cgnat.test", "100.64.0.1")],
)
def test_names_resolving_to_private_addresses_are_refused_before_connecting(servers, no_traffic_off_loopback, host, address):
    _, _, canary = servers
    before = len(canary.hits)
    assert _refusal(f"http://{host}:{canary.port}/by-name", _policy()) == f"private_host:{address}"
    assert len(canary.hits) == before


def test_a_real_dns_name_for_loopback_is_refused(servers, no_traffic_off_loopback):
    """No override: the system resolver answers 127.0.0.1 for localhost, the check refuses it."""
    files, _, _ = servers
    policy = _policy(addresses=AddressPolicy(False, ()), resolve=())
    assert _refusal(files.url("/ok.jpg").replace("127.0.0.1", "localhost"), policy).startswith("private_host:")


@pytest.mark.parametrize(
    "path,reason",
    [("/to-meta", "redirect_to_private_host:169.254.169.254"), ("/to-ten", "redirect_to_private_host:10.0.0.8"),
     ("/to-canary", f"redirect_to_private_host:{CANARY_HOST}"),
     ("/to-meta-name", "redirect_to_private_host:169.254.169.254"),
     ("/to-ftp", "scheme_not_allowed:ftp"), ("/loop", "too_many_redirects"), ("/chain/0", "too_many_redirects")],
)
def test_redirects_are_checked_hop_by_hop(servers, no_traffic_off_loopback, path, reason):
    files, _, canary = servers
    before = len(canary.hits)
    assert _refusal(files.url(path), _policy()) == reason
    assert len(canary.hits) == before


def test_allow_private_hosts_lets_the_canary_be_reached(servers, no_traffic_off_loopback):
    """The same redirect is followed when private hosts are allowed: the refusal above is
    the policy, not a broken redirect (the canary body never ends, so the cap stops it)."""
    files, _, canary = servers
    before = len(canary.hits)
    policy = _policy(addresses=AddressPolicy(allow_all=True))
    assert _refusal(files.url("/to-canary"), policy) == f"body_too_large:{MAX_BODY}"
    assert canary.hits[before:] == ["/endless-redirected"]


def test_bodies_are_capped_declared_or_streamed(servers, no_traffic_off_loopback):
    files, streams, _ = servers
    assert _refusal(files.url("/big.jpg"), _policy()) == f"body_too_large:{MAX_BODY}"
    assert _refusal(streams.url("/endless"), _policy()) == f"body_too_large:{MAX_BODY}"


def test_a_trickling_body_hits_the_fetch_deadline(servers, no_traffic_off_loopback):
    _, streams, _ = servers
    assert _refusal(streams.url("/trickle"), _policy(max_fetch_seconds=1.0)) == "timeout:max_fetch_seconds"


def test_no_environment_proxy_is_used(servers, no_traffic_off_loopback, monkeypatch):
    """A proxy would be the peer and hide the real target, so the opener ignores them."""
    files, _, _ = servers
    monkeypatch.setenv("http_proxy", "http://10.0.0.9:3128")
    assert _fetch(files.url("/ok.jpg"), _policy()) == b"\xff\xd8 image bytes"


def test_declared_pixels_are_checked_from_the_header():
    refused = lambda data: verified_reason(declared_pixels_refusal(data, MAX_PIXELS))  # noqa: E731
    assert refused(png_declaring(50_000, 50_000)) == f"image_too_large:{MAX_PIXELS}"
    assert refused(png_declaring(2_000, 2_000)) == f"image_too_large:{MAX_PIXELS}"
    assert declared_pixels_refusal(png_declaring(500, 500), MAX_PIXELS) is None
    assert refused(b"") == "not_an_image:empty_body"
    assert declared_pixels_refusal(b"<html></html>", MAX_PIXELS) is None  # the decoder rejects it later
