"""Client location (geo.locate): Cloudflare headers only from trusted proxies, a MaxMind
database built here with a writer library (v4 and v6), explicit points, the default."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geo.locate import Location, Locator, MaxMind, parse_coordinate, parse_country
from icegate.errors import ConfigError

DEFAULT = Location(50.11, 8.68, "default")
PROXIES = (ipaddress.ip_network("173.245.48.0/20"), ipaddress.ip_network("2400:cb00::/32"))
PROXY = "173.245.48.7"
CF = {"cf-iplatitude": "-33.8688", "cf-iplongitude": "151.2093", "cf-ipcountry": "AU"}


def build_mmdb(path: Path) -> Path:
    """A City-shaped database: one IPv4 and one IPv6 network, plus a record without location."""
    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    writer.insert_network(
        IPSet(["198.51.100.0/24"]),
        {"country": {"iso_code": "US"}, "location": {"latitude": 39.04, "longitude": -77.49}},
    )
    writer.insert_network(
        IPSet(["2001:db8:5::/48"]),
        {"country": {"iso_code": "SG"}, "location": {"latitude": 1.35, "longitude": 103.82}},
    )
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"country": {"iso_code": "NZ"}})
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def mmdb(tmp_path_factory: pytest.TempPathFactory) -> MaxMind:
    return MaxMind(build_mmdb(tmp_path_factory.mktemp("geo") / "city.mmdb"))


def test_cloudflare_headers_from_a_trusted_proxy() -> None:
    where, notes = Locator(DEFAULT, PROXIES).locate(CF, PROXY)
    assert (where.lat, where.lon, where.source, where.country) == (-33.8688, 151.2093, "cloudflare", "AU")
    assert notes == []
    where, _ = Locator(DEFAULT, PROXIES).locate(CF, "2400:cb00:1::5")  # v6 proxy
    assert where.source == "cloudflare"
    where, _ = Locator(DEFAULT, PROXIES).locate(CF, "::ffff:173.245.48.9")  # v4-mapped peer
    assert where.source == "cloudflare"


@pytest.mark.parametrize("peer", ["192.0.2.66", "2001:db8::66", None, "not-an-address"])
def test_cloudflare_headers_from_anyone_else_are_ignored(peer: str | None) -> None:
    locator = Locator(DEFAULT, PROXIES)
    where, notes = locator.locate(CF, peer)
    assert where.source == "default" and where.country is None
    assert locator.untrusted_headers == 1
    assert "untrusted" in notes[0]


def test_no_trusted_proxies_means_no_header_is_believed() -> None:
    where, _ = Locator(DEFAULT).locate(CF, PROXY)
    assert where.source == "default"


@pytest.mark.parametrize(
    "headers",
    [
        {"cf-iplatitude": "91", "cf-iplongitude": "10"},
        {"cf-iplatitude": "45", "cf-iplongitude": "-180.5"},
        {"cf-iplatitude": "nan", "cf-iplongitude": "10"},
        {"cf-iplatitude": "inf", "cf-iplongitude": "10"},
        {"cf-iplatitude": "", "cf-iplongitude": "10"},
        {"cf-iplatitude": "45"},
        {"cf-iplongitude": "45"},
        {"cf-iplatitude": "4" * 40, "cf-iplongitude": "1"},
        {"cf-iplatitude": "12,5", "cf-iplongitude": "1"},
        {"cf-iplatitude": "0x10", "cf-iplongitude": "1"},
    ],
)
def test_malformed_headers_fall_through_to_the_next_source(headers: dict[str, str]) -> None:
    locator = Locator(DEFAULT, PROXIES)
    where, notes = locator.locate(headers, PROXY)
    assert where.source == "default"
    assert locator.bad_headers == 1
    assert "malformed" in notes[0]


def test_country_only_header_selects_the_country_not_a_location() -> None:
    where, notes = Locator(DEFAULT, PROXIES).locate({"cf-ipcountry": "de"}, PROXY)
    assert (where.source, where.country) == ("default", "DE")
    assert notes == []


@pytest.mark.parametrize(
    ("text", "expected"), [("US", "US"), ("us", "US"), ("XX", None), ("USA", None), ("1A", None), ("", None)]
)
def test_parse_country(text: str, expected: str | None) -> None:
    assert parse_country(text) == expected


def test_parse_coordinate_bounds() -> None:
    assert parse_coordinate("-90", 90) == -90.0
    assert parse_coordinate("90.0001", 90) is None
    assert parse_coordinate(" 12.5 ", 90) == 12.5
    assert parse_coordinate(None, 90) is None


def test_mmdb_resolves_v4_and_v6(mmdb: MaxMind) -> None:
    locator = Locator(DEFAULT, PROXIES, mmdb)
    where, _ = locator.locate({}, "198.51.100.77")
    assert (where.lat, where.lon, where.source, where.country, where.address) == (
        39.04,
        -77.49,
        "mmdb",
        "US",
        "198.51.100.77",
    )
    where, _ = locator.locate({}, "2001:db8:5::1234")
    assert (where.lat, where.lon, where.source, where.country) == (1.35, 103.82, "mmdb", "SG")


def test_mmdb_uses_the_client_address_a_trusted_proxy_names(mmdb: MaxMind) -> None:
    locator = Locator(DEFAULT, PROXIES, mmdb)
    where, _ = locator.locate({"cf-connecting-ip": "2001:db8:5::9"}, PROXY)
    assert where.source == "mmdb" and where.country == "SG"
    # ... but not one an untrusted peer names.
    where, _ = locator.locate({"cf-connecting-ip": "2001:db8:5::9"}, "198.51.100.1")
    assert where.source == "mmdb" and where.country == "US"


def test_mmdb_miss_and_records_without_location_fall_back(mmdb: MaxMind) -> None:
    locator = Locator(DEFAULT, PROXIES, mmdb)
    where, notes = locator.locate({}, "192.0.2.1")
    assert where.source == "default" and "not in the MaxMind database" in notes[0]
    where, _ = locator.locate({}, "203.0.113.5")
    assert where.source == "default"


def test_explicit_location_and_lookup_of_a_given_address(mmdb: MaxMind) -> None:
    locator = Locator(DEFAULT, PROXIES, mmdb)
    where, _ = locator.locate({}, "198.51.100.77", explicit=(10.0, 20.0))
    assert (where.lat, where.lon, where.source) == (10.0, 20.0, "explicit")
    where, _ = locator.locate({}, None, address="2001:db8:5::1")
    assert where.source == "mmdb" and where.country == "SG"
    with pytest.raises(ValueError, match="not an IP address"):
        locator.locate({}, None, address="example.com")


def test_missing_database_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^geo\.mmdb: no MaxMind database at .*nope\.mmdb"):
        MaxMind(tmp_path / "nope.mmdb")


@pytest.mark.parametrize("content", [b"", b"not a maxmind database" * 100, None])
def test_corrupt_database_fails_at_start(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.mmdb"
    if content is None:  # a real database cut in half
        build_mmdb(tmp_path / "good.mmdb")
        content = (tmp_path / "good.mmdb").read_bytes()
        content = content[: len(content) // 2]
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"^geo\.mmdb: .*bad\.mmdb is not a MaxMind database"):
        MaxMind(path)
