"""Fetching images by URL without becoming a server-side request forgery tool.

A corpus or a retrieved document can name any URL. Fetching it from the application's
network position could reach the cloud metadata service, the admin port on localhost or a
database in the private network. So, by default:

* only ``http`` and ``https``; ``file:``, ``ftp:`` and the rest are refused;
* the address actually connected to (checked on the socket, after DNS, so a name that
  re-resolves to an inner address is caught too) must be public: loopback, private,
  link-local, shared, reserved, multicast and unspecified addresses are refused unless
  the host or its network is on ``allow``;
* redirects are followed by hand, at most ``max_redirects``, each one checked again;
* the whole download has a deadline (``timeout_s``), not only each read, and at most
  ``max_bytes`` are read.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

from idmrag_plugin.errors import ImageWithheldError, InvalidImageError

CHUNK = 64 * 1024


class FetchRefusedError(ImageWithheldError):
    """The URL points somewhere the fetch policy does not allow (scheme or address)."""


def _parse_allow(entries: Iterable[str]) -> tuple[frozenset[str], tuple[ipaddress._BaseNetwork, ...]]:
    hosts, networks = set(), []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry.lower().rstrip("."))
    return frozenset(hosts), tuple(networks)


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class FetchPolicy:
    """Where image URLs may be fetched from, and how much of them.

    Args:
        timeout_s: deadline for the whole download, redirects included.
        max_bytes: the largest body read; a larger one is refused.
        max_redirects: redirects followed (each checked like the first URL).
        allow: hosts (``"images.internal"``) or networks (``"10.0.0.0/8"``, ``"127.0.0.1"``)
            that may be fetched although they are not public addresses.
    """

    timeout_s: float = 10.0
    max_bytes: int = 20_000_000
    max_redirects: int = 3
    allow: tuple[str, ...] = field(default_factory=tuple)

    def _allowed(self, host: str, address: str) -> bool:
        hosts, networks = _parse_allow(self.allow)
        if host.lower().rstrip(".") in hosts:
            return True
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if any(ip in net for net in networks):
            return True
        return is_public(address)

    def fetch(self, url: str) -> bytes:
        """The body of ``url``, or :class:`FetchRefusedError` / :class:`InvalidImageError`."""
        deadline = time.monotonic() + self.timeout_s
        for _ in range(self.max_redirects + 1):
            status, location, body = self._get(url, deadline)
            if status in (301, 302, 303, 307, 308):
                if not location:
                    raise InvalidImageError(f"redirect without a Location from {_redact(url)}")
                url = urllib.parse.urljoin(url, location)
                continue
            if status != 200:
                raise InvalidImageError(f"image URL answered HTTP {status}: {_redact(url)}")
            return body
        raise InvalidImageError(f"more than {self.max_redirects} redirects: {_redact(url)}")

    def _get(self, url: str, deadline: float) -> tuple[int, str | None, bytes]:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchRefusedError(f"only http(s) image URLs are fetched, not {scheme or 'no scheme'!r}")
        host = parts.hostname
        if not host:
            raise InvalidImageError(f"image URL has no host: {_redact(url)}")
        port = parts.port or (443 if scheme == "https" else 80)
        policy = self
        # Refuse before connecting (no probing of inner ports), and check the socket's peer
        # again after connecting (a name may resolve differently the second time).
        try:
            resolved = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
        except (OSError, UnicodeError) as exc:
            raise InvalidImageError(f"cannot resolve the host of {_redact(url)}: {exc}") from exc
        for address in sorted(resolved):
            if not self._allowed(host, address):
                raise FetchRefusedError(
                    f"refusing to fetch from {host} ({address}): not a public address; add it to the "
                    "fetch allow-list (fetch_allow=...) if the images really live there"
                )

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise InvalidImageError(f"fetching {_redact(url)} took longer than {policy.timeout_s} s")
            return left

        sockets: list[socket.socket] = []  # the connection drops its reference once the body starts

        class Checked(http.client.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                policy._check_peer(host, self.sock)
                sockets.append(self.sock)

        class CheckedTLS(http.client.HTTPSConnection):
            def connect(self) -> None:
                # Connect and check the peer before any TLS byte goes out.
                self.sock = socket.create_connection((self.host, self.port), self.timeout)
                policy._check_peer(host, self.sock)
                self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)
                sockets.append(self.sock)

        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = CheckedTLS(host, port, timeout=remaining(), context=ssl.create_default_context())
        else:
            conn = Checked(host, port, timeout=remaining())
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            conn.request("GET", path, headers={"User-Agent": "idmrag-plugin", "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                return response.status, response.getheader("Location"), b""
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > self.max_bytes:
                raise InvalidImageError(f"image at URL is {int(length):,} bytes, over max_bytes={self.max_bytes:,}")
            body = bytearray()
            while True:
                sockets[-1].settimeout(remaining())
                chunk = response.read1(CHUNK)
                if not chunk:
                    break
                body += chunk
                if len(body) > self.max_bytes:
                    raise InvalidImageError(f"image at URL is larger than max_bytes={self.max_bytes:,}")
            return response.status, None, bytes(body)
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() >= deadline:
                raise InvalidImageError(f"fetching {_redact(url)} took longer than {self.timeout_s} s") from exc
            raise InvalidImageError(f"cannot fetch image URL {_redact(url)}: {exc}") from exc
        finally:
            conn.close()

    def _check_peer(self, host: str, sock: socket.socket) -> None:
        address = sock.getpeername()[0]
        if not self._allowed(host, address):
            sock.close()
            raise FetchRefusedError(
                f"refusing to fetch from {host} ({address}): not a public address; add it to the "
                "fetch allow-list (fetch_allow=...) if the images really live there"
            )


def _redact(url: str) -> str:
    """The URL without query string or credentials, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
