"""A raw HTTP/1.1 client over TCP or TLS (Python's socket and ssl) that records how its one
response ended (or of each of --requests pipelined ones), for tests/hyper.rs. One JSON line
per response on stdout:
  "local": its own address; "status", "head_bytes", "content_length";
  "received_bytes": head + body bytes read; "complete";
  "end": how reading stopped: "complete" (the whole Content-Length), "reset" (ECONNRESET),
    "eof" (the peer's FIN; over TLS, one without a close_notify before it), "close_notify"
    (TLS: the peer's close_notify), "timeout";
  "body_sent": request body bytes sent with the head;
  "after" (--read-past-end): how one more read after a whole response ended, up to 2 s;
  "rest_sent", "rest_end" (--send-rest-after): the late body bytes the kernel took, and "sent"
    or the error that stopped them ("EPIPE" or "ECONNRESET" after the server's reset).

Usage: request.py PORT [--tls] [--method M] [--path P] [--requests N]
                       [--promise N [--send N] [--send-rest-after S]]
                       [--half-close] [--read-after S] [--rcvbuf B] [--read-bytes N]
                       [--read-delay S] [--read-past-end] [--timeout S]

--requests N: N requests sent at once, before any answer is read (HTTP/1.1 pipelining; every
read takes what has come, answers and all, up to --read-bytes). --promise N: a request body of N bytes promised (Content-Length); --send N: only N of them sent,
with the head in one send (over TLS a short body shares the head's record); --send-rest-after S:
the rest S seconds later, while reading. --half-close: shutdown(SHUT_WR) right after the
request (TCP only). --read-after S: the first read S seconds after the request. --rcvbuf B: the
receive buffer, set before connecting (SO_RCVBUFFORCE as root, past net.core.rmem_max; else
SO_RCVBUF). --read-bytes N / --read-delay S: each read asks at most N bytes and is followed by
a sleep of S seconds (a slow reader).
"""
import argparse, errno, json, socket, ssl, sys, threading, time

SO_RCVBUFFORCE = 33
# A head longer than this is not an answer this client expects: it stops reading.
MAX_HEAD = 64 << 10

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("--tls", action="store_true")
p.add_argument("--method", default="GET")
p.add_argument("--path", default="/")
p.add_argument("--requests", type=int, default=1)
p.add_argument("--promise", type=int, default=0)
p.add_argument("--send", type=int)
p.add_argument("--send-rest-after", type=float)
p.add_argument("--half-close", action="store_true")
p.add_argument("--read-after", type=float, default=0)
p.add_argument("--rcvbuf", type=int)
p.add_argument("--read-bytes", type=int, default=65536)
p.add_argument("--read-delay", type=float, default=0)
p.add_argument("--read-past-end", action="store_true")
p.add_argument("--timeout", type=float, default=30)
a = p.parse_args()
if a.half_close and a.tls:
    sys.exit("--half-close is for TCP (a TLS socket cannot half-close)")
if a.requests > 1 and a.promise:
    sys.exit("--requests is for requests without a body")


def connect():
    """The socket, connected (and its TLS handshake done), and its own address."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if a.rcvbuf:
        try:
            raw.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, a.rcvbuf)
        except PermissionError:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
    raw.settimeout(a.timeout)
    raw.connect(("127.0.0.1", a.port))
    local = "%s:%d" % raw.getsockname()
    if not a.tls:
        return raw, local
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # A FIN without close_notify raises SSLEOFError; recv returns b"" only after close_notify.
    return ctx.wrap_socket(raw, suppress_ragged_eofs=False), local


s, local = connect()
body_sent = a.promise if a.send is None else min(a.send, a.promise)
head = f"{a.method} {a.path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: tw-request\r\n"
if a.promise:
    head += f"Content-Length: {a.promise}\r\n"
request = (head + "\r\n").encode() + b"u" * body_sent
s.sendall(request * a.requests)
late = {"sent": 0, "end": "sent"}


def send_rest():
    """The rest of the promised body, --send-rest-after seconds after the request."""
    time.sleep(a.send_rest_after)
    try:
        while body_sent + late["sent"] < a.promise:
            late["sent"] += s.send(b"u" * min(a.promise - body_sent - late["sent"], 65536))
    except OSError as e:
        late["end"] = errno.errorcode.get(e.errno, str(e))


rest_sender = None
if a.send_rest_after is not None:
    rest_sender = threading.Thread(target=send_rest, daemon=True)
    rest_sender.start()
if a.half_close:
    s.shutdown(socket.SHUT_WR)
time.sleep(a.read_after)


def read():
    """(bytes, None), or (b"", how the stream ended). What a reset leaves queued is read first:
    Linux reports ECONNRESET once the receive queue is empty."""
    try:
        d = s.recv(a.read_bytes)
    except ConnectionResetError:
        return b"", "reset"
    except ssl.SSLEOFError:
        return b"", "eof"
    except (socket.timeout, TimeoutError):
        return b"", "timeout"
    if not d:
        return b"", "close_notify" if a.tls else "eof"
    if a.read_delay:
        time.sleep(a.read_delay)
    return d, None


def content_length(head):
    """The head's status and Content-Length (0 when it has none)."""
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length" and v.strip().isdigit():
            length = int(v)
    return int(lines[0].split()[1]), length


def one_response(buf, end):
    """Read one response, starting with the bytes already in `buf`: its record, the bytes
    read past it (the next pipelined response's), and how the stream ended (None: open)."""
    got = {"local": local, "status": None, "head_bytes": 0, "content_length": None,
           "received_bytes": 0, "complete": False, "end": None, "body_sent": body_sent}
    while b"\r\n\r\n" not in buf and end is None and len(buf) < MAX_HEAD:
        d, end = read()
        buf += d
    if b"\r\n\r\n" not in buf:
        got["received_bytes"], got["end"] = len(buf), end or "head too long"
        return got, b"", end or "head too long"
    head, _, buf = buf.partition(b"\r\n\r\n")
    got["status"], length = content_length(head)
    got["head_bytes"], got["content_length"] = len(head) + 4, length
    while len(buf) < length and end is None:
        d, end = read()
        buf += d
    body, buf = buf[:length], buf[length:]
    got["complete"] = len(body) == length
    got["end"] = "complete" if got["complete"] else end
    got["received_bytes"] = got["head_bytes"] + len(body)
    return got, buf, end


buf, end = b"", None
for i in range(a.requests):
    got, buf, end = one_response(buf, end)
    if i == a.requests - 1 and got["complete"] and a.read_past_end:
        s.settimeout(2)
        d, after = read()
        got["after"] = after or "more bytes"
    if i == a.requests - 1 and rest_sender:
        rest_sender.join(timeout=a.timeout)
        got["rest_sent"], got["rest_end"] = late["sent"], late["end"]
    print(json.dumps(got), flush=True)
    if not got["complete"]:
        break
s.close()
