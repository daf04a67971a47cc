"""Images made here (real PNG, GIF and SVG files of a given size; JPEG and WebP headers) and an HTTP server on
127.0.0.1 that serves them, or misbehaves on purpose: hangs, never ends, lies, loops."""

from __future__ import annotations

import json
import struct
import threading
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def png(width: int, height: int, *, rgb: tuple[int, int, int] = (30, 90, 200)) -> bytes:
    """A real PNG of one colour: browsers show it, so they can say its size too."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + bytes(rgb) * width
    pixels = zlib.compress(row * height, 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def png_header(width: int, height: int) -> bytes:
    """Just the signature and IHDR: what a decompression bomb shows before its data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + b"\0\0\0\0"


def gif(width: int, height: int) -> bytes:
    """A real GIF: a width x height screen with one 1x1 pixel drawn on it."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x1e\x5a\xc8\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b"\x3b"


def svg(width: int | str, height: int | str, *, view_box: str = "") -> bytes:
    box = f' viewBox="{view_box}"' if view_box else ""
    size = "".join(f' {name}="{value}"' for name, value in (("width", width), ("height", height)) if value)
    shape = '<rect width="10" height="10"/>'
    return f'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"{size}{box}>{shape}</svg>'.encode()


def jpeg_header(width: int, height: int, *, orientation: int = 0, padding: int = 0) -> bytes:
    """SOI, an APP0, an optional EXIF orientation, `padding` bytes of APP segments, then the frame header."""
    out = b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    if orientation:
        ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0\0\0\0"
        tiff = b"MM\0\x2a" + struct.pack(">I", 8) + ifd
        exif = b"Exif\0\0" + tiff
        out += b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    while padding > 0:
        size = min(padding, 65_000)
        out += b"\xff\xed" + struct.pack(">H", size + 2) + b"\0" * size
        padding -= size
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return out + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xda"


def webp_header(kind: str, width: int, height: int) -> bytes:
    if kind == "VP8 ":
        data = b"\x00\x00\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
    elif kind == "VP8L":
        data = b"\x2f" + struct.pack("<I", (width - 1) | ((height - 1) << 14))
    else:
        data = b"\0\0\0\0" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + kind.encode() + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def seed_sizes(data_dir: Path, sizes: dict[str, tuple[int, int]]) -> None:
    """The image-size cache as an earlier online render leaves it (the format docs/writing.md describes)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    entries = {url: list(size) for url, size in sizes.items()}
    (data_dir / "image-sizes.json").write_text(
        json.dumps({"sizes": entries, "failures": {}}), encoding="utf-8"
    )


Handler = Callable[[BaseHTTPRequestHandler], None]


class ImageServer:
    """A threaded HTTP server on 127.0.0.1; `routes` maps a path to what it does. Every request is logged."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: list[str] = []
        self.release = threading.Event()  # set at stop: handlers that hang let go
        self.ended: dict[str, threading.Event] = {}  # path -> set when a streaming handler saw the client go
        self.sent: dict[str, int] = {}
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                outer.requests.append(self.path)
                route = outer.routes.get(self.path.partition("?")[0])
                if route is None:
                    self.send_error(404)
                    return
                route(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> ImageServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- what a path can do --------------------------------------------------------------------------------

    def image(self, path: str, body: bytes, content_type: str = "image/png") -> str:
        def serve(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)

        self.routes[path] = serve
        return self.url(path)

    def raw(self, path: str, head: bytes, body: bytes, *, hold: bool = False) -> str:
        """Exactly these header lines and body bytes; `hold` keeps the connection open after them."""

        def serve(h: BaseHTTPRequestHandler) -> None:
            h.wfile.write(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n" + body)
            h.wfile.flush()
            if hold:
                self.release.wait()
            h.close_connection = True

        self.routes[path] = serve
        return self.url(path)

    def hang(self, path: str) -> str:
        """Accept the request, answer nothing until the server stops."""
        self.routes[path] = lambda h: (self.release.wait(), setattr(h, "close_connection", True)) and None
        return self.url(path)

    def stream(self, path: str, start: bytes, filler: bytes) -> str:
        """`start`, then `filler` again and again until the client goes away (ended[path] is set then)."""
        self.ended[path] = threading.Event()
        self.sent[path] = 0

        def serve(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.end_headers()
            try:
                h.wfile.write(start)
                while not self.release.is_set():
                    h.wfile.write(filler)
                    self.sent[path] += len(filler)
            except OSError:
                pass
            finally:
                h.close_connection = True
                self.ended[path].set()

        self.routes[path] = serve
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        def serve(h: BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Location", location)
            h.send_header("Content-Length", "0")
            h.end_headers()

        self.routes[path] = serve
        return self.url(path)
