# The WSGI app that gunicorn (tests/servers/gunicorn/) and uWSGI (tests/servers/uwsgi/) serve
# to a reader that stopped reading, for their own timeouts to cut:
#
# - gunicorn's sync worker tells the master it is alive only between requests. While it
#   blocks in sendall() on a full socket, the master sees it silent for `timeout` seconds,
#   logs "WORKER TIMEOUT" and kills it (SIGABRT, then SIGKILL). The kernel closes the
#   worker's connection (FIN), 1 to 2 s in (the master checks once a second). The access log,
#   when on, never gets the request: the worker dies before logging it.
# - uWSGI writes the body without blocking and waits in poll() at most socket-timeout seconds
#   for the socket to drain. When it times out it logs "uwsgi_response_write_body_do()
#   TIMEOUT !!!" (and "OSError: write error"), ends the request and closes the connection
#   (FIN). Its request log says, for example, "generated 3145728 bytes in 1001 msecs".
#
# Either way the client has a 200 with a Content-Length and a short body.
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


def app(environ, start_response):
    headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(BODY))]
    start_response("200 OK", headers + EXTRA)
    return (PIECE for _ in range(BODY // len(PIECE)))
