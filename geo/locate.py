"""Where is the client? Cloudflare headers, a MaxMind database, an explicit point, a default.

In order (DESIGN §7):

1. Cloudflare's visitor-location headers ``cf-iplatitude``, ``cf-iplongitude`` (and
   ``cf-ipcountry``), believed **only** when the request's peer address is in a configured
   trusted proxy network: anyone else can send any header. Malformed or out-of-range
   values are ignored (counted as ``bad_headers``), never trusted half-way.
2. A MaxMind database (GeoLite2/GeoIP2 City layout, or any .mmdb with ``location``)
   through ``maxminddb``, looked up by the client address: ``cf-connecting-ip`` from a
   trusted proxy, else the peer address.
3. An explicit location (``?lat=&lon=`` of ``/v1/route``, ``geo resolve --lat --lon``).
4. The configured default, and the decision says so (``source: default``).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from icegate.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

CF_LAT = "cf-iplatitude"
CF_LON = "cf-iplongitude"
CF_COUNTRY = "cf-ipcountry"
CF_CLIENT = "cf-connecting-ip"
SOURCES = ("cloudflare", "mmdb", "explicit", "default")


@dataclass(frozen=True)
class Location:
    lat: float
    lon: float
    source: str  # one of SOURCES
    country: str | None = None
    address: str | None = None  # the client address looked up, when one was

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_coordinate(text: str | None, limit: float) -> float | None:
    """A finite decimal within ±limit, else None (an absent or malformed value)."""
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > 32:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or abs(value) > limit:
        return None
    return value


def parse_country(text: str | None) -> str | None:
    """ISO 3166 alpha-2, upper case; Cloudflare's ``XX`` (unknown) and ``T1`` (Tor) are no country."""
    if text is None:
        return None
    code = text.strip().upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha() or code == "XX":
        return None
    return code


def parse_address(text: str | None) -> IPAddress | None:
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


class MaxMind:
    """A MaxMind database opened once at start; a missing or corrupt file fails there."""

    def __init__(self, path: Path) -> None:
        try:
            import maxminddb
        except ImportError as exc:
            raise ConfigError("geo.mmdb", "the maxminddb package is not installed (icegate[geo])") from exc
        if not path.is_file():
            raise ConfigError("geo.mmdb", f"no MaxMind database at {path}")
        try:
            self._reader = maxminddb.open_database(str(path))
        except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
            raise ConfigError("geo.mmdb", f"{path} is not a MaxMind database: {exc}") from exc
        self.path = path
        self.metadata = self._reader.metadata()

    def lookup(self, address: IPAddress) -> Location | None:
        try:
            record = self._reader.get(str(address))
        except ValueError:  # an IPv6 address in an IPv4-only database
            return None
        if not isinstance(record, Mapping):
            return None
        where = record.get("location")
        if not isinstance(where, Mapping):
            return None
        lat = where.get("latitude")
        lon = where.get("longitude")
        if not isinstance(lat, (int, float)) or not isinstance(lon, (int, float)):
            return None
        if abs(lat) > 90 or abs(lon) > 180:
            return None
        country = None
        block = record.get("country")
        if isinstance(block, Mapping):
            code = block.get("iso_code")
            country = parse_country(code) if isinstance(code, str) else None
        return Location(float(lat), float(lon), "mmdb", country, str(address))

    def close(self) -> None:
        self._reader.close()


class Locator:
    """Locates a request from its headers and peer address (see the module docstring)."""

    def __init__(
        self,
        default: Location,
        trusted_proxies: tuple[Network, ...] = (),
        mmdb: MaxMind | None = None,
    ) -> None:
        self.default = default
        self.trusted_proxies = trusted_proxies
        self.mmdb = mmdb
        self.bad_headers = 0  # Cloudflare headers from a trusted proxy that did not parse
        self.untrusted_headers = 0  # Cloudflare headers from anyone else: ignored

    def trusted(self, peer: IPAddress | None) -> bool:
        if peer is None:
            return False
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return any(peer in net for net in self.trusted_proxies)

    def locate(
        self,
        headers: Mapping[str, str],
        peer: str | None,
        *,
        explicit: tuple[float, float] | None = None,
        address: str | None = None,
        country: str | None = None,
    ) -> tuple[Location, list[str]]:
        """The client's location and the notes of how it was found (JSON-ready, for the decision).

        ``headers`` must be case-insensitive or lower-case keyed. ``address`` asks for a
        database lookup of that address (``/v1/route?ip=``) instead of the request's;
        ``country`` is an explicit country (it selects the RTT matrix row).
        """
        where, notes = self._locate(headers, peer, explicit, address)
        given = parse_country(country)
        if given is not None and given != where.country:
            where = Location(where.lat, where.lon, where.source, given, where.address)
        return where, notes

    def _locate(
        self,
        headers: Mapping[str, str],
        peer: str | None,
        explicit: tuple[float, float] | None,
        address: str | None,
    ) -> tuple[Location, list[str]]:
        notes: list[str] = []
        peer_ip = parse_address(peer)
        has_cf = any(h in headers for h in (CF_LAT, CF_LON, CF_COUNTRY, CF_CLIENT))
        from_proxy = self.trusted(peer_ip)
        country = None
        client_ip = peer_ip
        if has_cf and not from_proxy:
            self.untrusted_headers += 1
            notes.append(f"cloudflare headers from untrusted {peer} ignored")
        elif has_cf:
            lat = parse_coordinate(headers.get(CF_LAT), 90.0)
            lon = parse_coordinate(headers.get(CF_LON), 180.0)
            country = parse_country(headers.get(CF_COUNTRY))
            client_ip = parse_address(headers.get(CF_CLIENT)) or peer_ip
            if explicit is None and address is None:
                if lat is not None and lon is not None:
                    return Location(lat, lon, "cloudflare", country, _text(client_ip)), notes
                if CF_LAT in headers or CF_LON in headers:
                    self.bad_headers += 1
                    notes.append("cloudflare location headers malformed or incomplete")
        if explicit is not None:
            return Location(explicit[0], explicit[1], "explicit", country), notes
        if address is not None:
            client_ip = parse_address(address)
            if client_ip is None:
                raise ValueError(f"not an IP address: {address!r}")
        if self.mmdb is not None and client_ip is not None:
            found = self.mmdb.lookup(client_ip)
            if found is not None:
                return found, notes
            notes.append(f"{client_ip} is not in the MaxMind database")
        where = self.default
        return Location(where.lat, where.lon, "default", country or where.country, _text(client_ip)), notes


def _text(address: IPAddress | None) -> str | None:
    return None if address is None else str(address)
