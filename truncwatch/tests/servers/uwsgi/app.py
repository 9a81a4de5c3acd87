# uWSGI with --http-socket (no router process) and socket-timeout: a worker whose write to a
# stalled reader makes no progress for `socket-timeout` seconds gives the response up.
#
# uWSGI writes the body without blocking and waits in poll() at most socket-timeout seconds
# for the socket to drain. When it times out it logs "uwsgi_response_write_body_do() TIMEOUT
# !!!" (and "OSError: write error"), ends the request and closes the connection (FIN): the
# client has a 200 with a Content-Length and a short body. Its request log says, for example,
# "generated 3145728 bytes in 1001 msecs (HTTP/1.1 200)".
#
# The response: 30 MiB in 1 MiB pieces with a Content-Length, plus the extra headers listed
# one per line ("Name: value") in the file named by $TW_HEADERS (empty for the short head).
import os

BODY = 30 << 20
PIECE = b"w" * (1 << 20)


def extra_headers():
    with open(os.environ["TW_HEADERS"], encoding="latin-1") as f:
        return [tuple(line.rstrip("\n").split(": ", 1)) for line in f if line.strip()]


EXTRA = extra_headers()


def application(environ, start_response):
    headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(BODY))]
    start_response("200 OK", headers + EXTRA)
    return (PIECE for _ in range(BODY // len(PIECE)))
