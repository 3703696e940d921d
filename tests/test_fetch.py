"""URL fetching: no server-side request forgery, a deadline for the whole download, a byte cap."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from idmrag_plugin.errors import ImageTooLargeError, InvalidImageError
from idmrag_plugin.fetch import FetchPolicy, FetchRefusedError, is_public
from idmrag_plugin.image_io import read_file_bounded

PAYLOAD = b"\x89PNG\r\n\x1a\n" + b"0" * 2000


@pytest.fixture(scope="module")
def server():
    """A local server: /ok, /slow (one byte every 0.2 s), /big, /redirect-loop, /to-ok."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/ok":
                self._send(PAYLOAD)
            elif self.path == "/slow":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                for _ in range(100):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.2)
            elif self.path == "/big":
                self.send_response(200)
                self.end_headers()  # no Content-Length: the cap must hold while reading
                try:
                    for _ in range(200):
                        self.wfile.write(b"y" * 10_000)
                except OSError:
                    return
            elif self.path == "/redirect-loop":
                self._redirect("/redirect-loop")
            elif self.path == "/to-ok":
                self._redirect("/ok")
            else:
                self.send_response(404)
                self.end_headers()

        def _send(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _redirect(self, where: str) -> None:
            self.send_response(302)
            self.send_header("Location", where)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_loopback_is_refused_by_default_and_reachable_when_allowed(server):
    with pytest.raises(FetchRefusedError, match="not a public address"):
        FetchPolicy().fetch(f"{server}/ok")
    assert FetchPolicy(allow=("127.0.0.1",)).fetch(f"{server}/ok") == PAYLOAD
    assert FetchPolicy(allow=("127.0.0.0/8",)).fetch(f"{server}/to-ok") == PAYLOAD
    assert FetchPolicy(allow=("localhost",)).fetch(server.replace("127.0.0.1", "localhost") + "/ok") == PAYLOAD


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x.jpg", "gopher://127.0.0.1/", "//x/y.jpg"])
def test_other_schemes_are_refused(url):
    with pytest.raises(FetchRefusedError, match="only http"):
        FetchPolicy(allow=("127.0.0.1",)).fetch(url)


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254", "100.64.0.1",
                "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "224.0.0.1"],
)
def test_inner_addresses_are_not_public(address):
    assert not is_public(address)


def test_public_addresses_are():
    assert is_public("93.184.216.34") and is_public("2606:2800:220:1:248:1893:25c8:1946")


def test_the_whole_download_has_a_deadline(server):
    start = time.monotonic()
    with pytest.raises(InvalidImageError, match="longer than"):
        FetchPolicy(timeout_s=1.0, allow=("127.0.0.1",)).fetch(f"{server}/slow")
    assert time.monotonic() - start < 3.0


def test_size_cap_holds_while_reading(server):
    with pytest.raises(InvalidImageError, match="max_bytes"):
        FetchPolicy(max_bytes=50_000, allow=("127.0.0.1",)).fetch(f"{server}/big")


def test_redirects_are_capped(server):
    with pytest.raises(InvalidImageError, match="redirects"):
        FetchPolicy(max_redirects=2, allow=("127.0.0.1",)).fetch(f"{server}/redirect-loop")


def test_a_file_over_the_byte_cap_is_refused_without_reading_it(tmp_path):
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as handle:  # sparse: 2 GB on paper, nothing on disk
        handle.truncate(2_000_000_000)
    with pytest.raises(ImageTooLargeError, match="over the cap"):
        read_file_bounded(huge, max_bytes=10_000_000)
    with pytest.raises(InvalidImageError, match="regular"):
        read_file_bounded("/dev/zero")


def test_engine_refuses_a_huge_file_from_its_size(tmp_path, engine):
    huge = tmp_path / "huge.png"
    with huge.open("wb") as handle:
        handle.truncate(engine.config.max_bytes + 1)
    with pytest.raises(ImageTooLargeError):
        engine.anonymize(huge)


def test_decompression_bomb_is_too_large_not_invalid(engine):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, "PNG")  # 400 MP, a few kB
    with pytest.raises(ImageTooLargeError):
        engine.anonymize(buffer.getvalue())
