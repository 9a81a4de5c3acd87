# uvicorn (h11): an ASGI app that declares a Content-Length and sends fewer bytes.
#
# This is what users hit when a file shrinks while it is served, or a middleware changes a
# body without fixing its Content-Length. The app sends the head (Content-Length: 30 MiB),
# 1 MiB of body and says it is done (more_body False). h11 refuses to end the message
# ("Too little data for declared Content-Length"); uvicorn logs "Exception in ASGI
# application" and, the response having started, closes the connection. The bytes already
# written are delivered, then a FIN: a 200 with a short body. Its access log, written when
# the head goes out, says "200 OK".
#
# The head carries the extra headers listed one per line ("Name: value") in the file named
# by $TW_HEADERS (empty for the short head).
import os

DECLARED = 30 << 20
SENT = 1 << 20


def extra_headers():
    with open(os.environ["TW_HEADERS"], encoding="latin-1") as f:
        return [tuple(line.rstrip("\n").split(": ", 1)) for line in f if line.strip()]


EXTRA = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra_headers()]


async def app(scope, receive, send):
    assert scope["type"] == "http"
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(DECLARED).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers + EXTRA})
    await send({"type": "http.response.body", "body": b"u" * SENT, "more_body": False})
