# gunicorn, sync worker, --timeout: a worker blocked sending a big body to a reader that
# stopped reading is killed mid-body.
#
# A sync worker tells the master it is alive only between requests. While it blocks in
# sendall() on a full socket, the master sees it silent for `timeout` seconds, logs
# "WORKER TIMEOUT" and kills it (SIGABRT, then SIGKILL). The kernel closes the worker's
# connection (FIN), 1 to 2 s in (the master checks once a second): the client has a 200
# with a Content-Length and a short body. The access log, when on, never gets the request:
# the worker dies before logging it.
#
# The response: 30 MiB in 1 MiB pieces with a Content-Length, plus the extra headers listed
# one per line ("Name: value") in the file named by $TW_HEADERS (empty for the short head).
import os

BODY = 30 << 20
PIECE = b"g" * (1 << 20)


def extra_headers():
    with open(os.environ["TW_HEADERS"], encoding="latin-1") as f:
        return [tuple(line.rstrip("\n").split(": ", 1)) for line in f if line.strip()]


EXTRA = extra_headers()


def app(environ, start_response):
    headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(BODY))]
    start_response("200 OK", headers + EXTRA)
    return (PIECE for _ in range(BODY // len(PIECE)))
