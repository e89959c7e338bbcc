"""The /play/ demo page: host, browse, waiting room and start in a browser, on lobby.js.

Static files shipped in this package (lobby.js is also clients/js/lobby.js, for
pages of one's own). Only the files listed here are served: no path from the
request ever reaches the file system.
"""

from __future__ import annotations

from http import HTTPStatus
from importlib import resources

from lobby.http import HttpError, HttpRequest, HttpResponse, Router

FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "play.js": ("play.js", "text/javascript; charset=utf-8"),
    "lobby.js": ("lobby.js", "text/javascript; charset=utf-8"),
}
# Small, and the same for the life of the process: read once.
_cache: dict[str, bytes] = {}


def _read(name: str) -> bytes:
    if name not in _cache:
        _cache[name] = resources.files(__name__).joinpath(name).read_bytes()
    return _cache[name]


def play_file(request: HttpRequest) -> HttpResponse:
    if request.path == "/play":
        # Relative URLs in the page (play.js, lobby.js) need the trailing slash.
        return HttpResponse(HTTPStatus.PERMANENT_REDIRECT, b"", "text/plain",
                            [("Location", "/play/")])
    rest = request.path[len("/play/"):]
    entry = FILES.get(rest)
    if entry is None:
        raise HttpError(HTTPStatus.NOT_FOUND, "NOT_FOUND", "no such file under /play/")
    name, content_type = entry
    return HttpResponse(HTTPStatus.OK, _read(name), content_type,
                        [("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff")])


def register(router: Router) -> None:
    router.add("GET", "/play/", play_file, prefix=True)  # also /play itself
