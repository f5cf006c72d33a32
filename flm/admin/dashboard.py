"""The web dashboard's files, served from inside the package (``flm/admin/static/``).

Only the files listed in the folder are served (read once, at start: they are small),
each with a strict Content-Security-Policy: scripts, styles and requests to this origin
only, no inline script, no ``eval``, no framing. The page uses relative URLs only, so it
works behind a reverse proxy under a sub-path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from flm.admin.errors import AdminError

STATIC = Path(__file__).parent / "static"
CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       b"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
       b"frame-ancestors 'none'")
TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
         ".css": b"text/css; charset=utf-8", ".svg": b"image/svg+xml",
         ".md": b"text/markdown; charset=utf-8"}


class Dashboard:
    """Serves ``index.html`` at the mount point and the other files by name."""

    def __init__(self, root: Path = STATIC) -> None:
        self.files: dict[str, tuple[bytes, bytes, bytes]] = {}
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in TYPES:
                body = path.read_bytes()
                etag = b'"' + hashlib.sha256(body).hexdigest()[:16].encode() + b'"'
                self.files[path.relative_to(root).as_posix()] = (TYPES[path.suffix], body, etag)

    def serve(self, request: Any, name: str) -> bytes:
        found = self.files.get(name or "index.html")
        if found is None:
            raise AdminError(404, "not_found", f"No dashboard file {name[:100]!r}.")
        content_type, body, etag = found
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-security-policy", CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"cache-control", b"no-cache")  # revalidate: an upgrade shows at once
        request.setHeader(b"etag", etag)
        if etag in (request.getHeader(b"if-none-match") or b""):
            request.setResponseCode(304)
            return b""
        return body
