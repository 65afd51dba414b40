"""The address policy is an explicit deny list (the IANA special-purpose registries), not
``is_global``: the addresses Python 3.11 calls global but are not, every IPv6 form that
carries an IPv4 address, and the registry ranges themselves, at the URL check and at
connect time. A socket audit hook fails a test if any connect to an address other than
the test's own servers (127.0.0.1, ::1) is even attempted."""

from __future__ import annotations

import ipaddress
import socket
import sys
import urllib.request

import pytest

from curate.schemas.reasons import reason
from curate.download.address_policy import IPV4_DENY, IPV6_DENY, AddressPolicy, address_text, is_public_address
from curate.download.precheck import check_url
from curate.download.safe_fetch import FetchPolicy, FetchVerdict, build_opener
from curate.synth.http_server import CorpusServer, Route
from raw_http import Raw, RawServer

OWN_SERVERS = {"127.0.0.1", "::1"}
_guard = {"on": False, "attempts": []}


def _audit(event: str, args) -> None:
    if event == "socket.connect" and _guard["on"]:
        address = args[1]
        host = address[0] if isinstance(address, tuple) else str(address)
        if host not in OWN_SERVERS:
            _guard["attempts"].append(host)
            raise RuntimeError(f"test tried to connect to {host}")


sys.addaudithook(_audit)


@pytest.fixture
def only_own_servers():
    """Fails the test if a connect to anything but 127.0.0.1 or ::1 is attempted."""
    _guard["on"], _guard["attempts"] = True, []
    yield
    _guard["on"] = False
    assert _guard["attempts"] == [], f"connects attempted to {_guard['attempts']}"


# The five spellings of the issue, each non-public although Python 3.11's is_global says
# otherwise, and neighbours of the same kind.
ISSUE = [
    ("http://[::127.0.0.1]/", "private_host:[::127.0.0.1]"),  # IPv4-compatible loopback
    ("http://[::ffff:0:127.0.0.1]/", "private_host:[::ffff:0:127.0.0.1]"),  # IPv4-translated (SIIT)
    ("http://[64:ff9b:1::7f00:1]/", "private_host:[64:ff9b:1::127.0.0.1]"),  # local-use NAT64, RFC 8215
    ("http://[fec0::1]/", "private_host:[fec0::1]"),  # site-local
    ("http://192.0.0.8/", "private_host:192.0.0.8"),  # IETF protocol assignments
]
NEIGHBOURS = [
    ("http://[::1]/x.jpg", "private_host:[::1]"),
    ("http://[::]/x.jpg", "private_host:[::]"),
    ("http://[::ffff:127.0.0.1]/", "private_host:[::ffff:127.0.0.1]"),
    ("http://[::ffff:a9fe:a9fe]/latest", "private_host:[::ffff:169.254.169.254]"),
    ("http://[64:ff9b::a9fe:a9fe]/latest", "private_host:[64:ff9b::169.254.169.254]"),  # metadata via NAT64
    ("http://[2002:a9fe:a9fe::1]/", "private_host:[2002:a9fe:a9fe::1]"),  # 6to4 of 169.254.169.254
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "private_host:[2001:0:4136:e378:8000:63bf:80ff:fffe]"),  # Teredo
    ("http://[2a00:1450::5efe:a00:1]/", "private_host:[2a00:1450::5efe:a00:1]"),  # ISATAP for 10.0.0.1
    ("http://[fe80::1%25eth0]/", "private_host:[fe80::1]"),  # the zone is input text: left out
    ("http://[fd00::1]/", "private_host:[fd00::1]"),
    ("http://[100::1]/", "private_host:[100::1]"),
    ("http://[3fff::1]/", "private_host:[3fff::1]"),
    ("http://[5f00::1]/", "private_host:[5f00::1]"),
    ("http://[2620:4f:8000::1]/", "private_host:[2620:4f:8000::1]"),
    ("http://[4000::1]/", "private_host:[4000::1]"),  # unallocated: outside 2000::/3
    ("http://192.0.0.9/", "private_host:192.0.0.9"),  # PCP anycast, "globally reachable" in the registry
    ("http://192.0.0.170/", "private_host:192.0.0.170"),
    ("http://192.31.196.1/", "private_host:192.31.196.1"),
    ("http://192.88.99.1/", "private_host:192.88.99.1"),
    ("http://0x7f.1/", "private_host:127.0.0.1"),
    ("http://3232235777/", "private_host:192.168.1.1"),
]


@pytest.mark.parametrize("url,want", ISSUE + NEIGHBOURS, ids=[u for u, _ in ISSUE + NEIGHBOURS])
def test_special_addresses_are_blocked_before_download(url, want):
    assert check_url(url, allow_private_hosts=False) == want


@pytest.mark.parametrize("network,what,rfc", IPV4_DENY + IPV6_DENY, ids=[n for n, _, _ in IPV4_DENY + IPV6_DENY])
def test_every_range_of_the_deny_list_is_refused_first_to_last(network, what, rfc):
    net = ipaddress.ip_network(network)
    assert rfc.startswith("RFC") and what
    for address in (net.network_address, net.broadcast_address, net.network_address + net.num_addresses // 2):
        assert not is_public_address(address), address
        assert not AddressPolicy().allows(address)
        assert AddressPolicy(allow_all=True).allows(address)


@pytest.mark.parametrize("address", [
    "9.255.255.255", "11.0.0.0", "100.63.255.255", "100.128.0.0", "126.255.255.255", "128.0.0.0",
    "169.253.255.255", "169.255.0.0", "172.15.255.255", "172.32.0.0", "192.0.1.0", "192.167.255.255",
    "192.169.0.0", "198.17.255.255", "198.20.0.0", "223.255.255.255", "8.8.8.8",
    "2606:4700::1111", "2a00:1450:4001::1", "2001:200::1", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
])
def test_public_addresses_just_outside_the_ranges_pass(address):
    assert is_public_address(ipaddress.ip_address(address)), address


def test_reasons_spell_addresses_as_people_write_them():
    """Before, `[::1]` gave `private_host:1` and `[::]` gave `private_host:`."""
    for text, shown in [("::1", "[::1]"), ("::", "[::]"), ("::ffff:7f00:1", "[::ffff:127.0.0.1]"),
                        ("64:ff9b::a00:1", "[64:ff9b::10.0.0.1]"), ("10.0.0.1", "10.0.0.1")]:
        assert address_text(ipaddress.ip_address(text)) == shown
        assert reason("private_host", shown) == f"private_host:{shown}"
    assert reason("private_host", "[::1] [/bold]") == "private_host:1_bold"  # not an address: reduced to [A-Za-z0-9._+-]
    assert reason("download_error", ":::") == "download_error"  # never a bare `code:`


# -- at connect time: names that resolve to these addresses, and redirects to them --

SPECIAL = ["::127.0.0.1", "::ffff:0:127.0.0.1", "64:ff9b:1::7f00:1", "fec0::1", "192.0.0.8",  # the issue's
           "::1", "::", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "fd00::1",
           "fe80::1", "169.254.169.254", "10.0.0.8", "100.64.0.1", "192.0.0.170", "127.0.0.2"]
RESOLVE = {f"h{i}.test": address for i, address in enumerate(SPECIAL)}  # download.resolve: no DNS involved


def _policy(**overrides) -> FetchPolicy:
    base = dict(addresses=AddressPolicy(False, ("127.0.0.1/32",)), resolve=tuple(RESOLVE.items()), max_fetch_seconds=5.0)
    return FetchPolicy(**{**base, **overrides})


def _verdict(url: str, policy: FetchPolicy) -> str:
    with pytest.raises(FetchVerdict) as caught:
        with build_opener(policy).open(urllib.request.Request(url), timeout=2) as response:
            response.read()
    return caught.value.reason


@pytest.fixture(scope="module")
def server():
    routes = {"/ok.jpg": Route(b"\xff\xd8 image")}
    routes.update({f"/to/{host}": Route(status=302, redirect_to=f"http://{host}:9/x.jpg") for host in RESOLVE})
    routes.update({f"/to-literal/{i}": Route(status=302, redirect_to=url) for i, (url, _) in enumerate(ISSUE)})
    with CorpusServer(routes) as files:
        yield files


@pytest.mark.parametrize("host", sorted(RESOLVE))
def test_names_resolving_to_special_addresses_are_refused_without_a_connect(host, only_own_servers):
    shown = address_text(ipaddress.ip_address(RESOLVE[host]))
    assert _verdict(f"http://{host}:9/x.jpg", _policy()) == f"private_host:{shown}"


@pytest.mark.parametrize("host", sorted(RESOLVE))
def test_redirects_to_special_addresses_are_not_followed(server, host, only_own_servers):
    shown = address_text(ipaddress.ip_address(RESOLVE[host]))
    assert _verdict(server.url(f"/to/{host}"), _policy()) == f"redirect_to_private_host:{shown}"


@pytest.mark.parametrize("index", range(len(ISSUE)))
def test_redirects_to_the_issue_literals_are_not_followed(server, index, only_own_servers):
    assert _verdict(server.url(f"/to-literal/{index}"), _policy()) == "redirect_to_" + ISSUE[index][1]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_loopback_server_is_refused_unless_allowed(only_own_servers):
    """A real server on [::1]: refused by default (and it sees no request), fetched once
    allowed_networks names it: the refusal is the policy, not a broken IPv6 path."""
    body = b"\xff\xd8 v6 image"
    v6 = RawServer({"/a.jpg": Raw(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)}, host="::1")
    try:
        assert _verdict(v6.url("/a.jpg"), _policy()) == "private_host:[::1]"
        assert v6.hits == []
        with build_opener(_policy(addresses=AddressPolicy(False, ("::1/128",)))).open(v6.url("/a.jpg"), timeout=2) as r:
            assert r.read() == body
        assert v6.hits == ["/a.jpg"]
    finally:
        v6.close()
