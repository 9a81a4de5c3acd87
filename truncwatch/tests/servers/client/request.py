"""A raw HTTP/1.1 client over TCP or TLS (Python's socket and ssl) that records how its one
response ended, for tests/hyper.rs: one JSON line on stdout,
{"local": its own address, "status", "head_bytes", "content_length", "received_bytes" (head +
body bytes read), "complete", "end", "body_sent"}.

"tcp_state" is the socket's TCP state when reading stopped ("close_wait" after the server's FIN,
"close" after its reset). "end" is how reading stopped: "complete" (the whole Content-Length), "reset" (ECONNRESET),
"eof" (the peer's FIN; over TLS, one without a close_notify first), "close_notify" (TLS: the
peer's close_notify), "timeout".

With --read-past-end, a whole response is followed by one more read (up to 2 s): how the
server then ended the connection goes in "after" ("reset", "eof", "close_notify", "timeout").

Usage: request.py PORT [--tls] [--method M] [--promise N] [--send N] [--send-rest-after S]
                       [--half-close now|after-head] [--read-after S] [--pause-after-head S]
                       [--rcvbuf B] [--read-bytes N] [--read-delay S] [--read-past-end]

--promise N: a request body of N bytes promised (Content-Length); --send N: only N of them sent
(default: all); --send-rest-after S: the rest of them S seconds later, while reading
("rest_sent": the bytes the kernel took; "rest_end": "sent", or the error that stopped it,
such as "ECONNRESET" or "EPIPE" after the server's reset). --half-close: shutdown(SHUT_WR) right after the request, or once the response
head has arrived (TCP only). --read-after: wait this long after sending before the first read;
--pause-after-head: this long once the head has arrived (after a half-close). --rcvbuf: the
receive buffer, set before connecting (SO_RCVBUFFORCE as root, so it may pass
net.core.rmem_max; else SO_RCVBUF). --read-bytes/--read-delay: each read asks at most N bytes
and is followed by a sleep of S seconds (a slow reader).
"""
import argparse, errno, json, socket, ssl, sys, threading, time

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("--tls", action="store_true")
p.add_argument("--method", default="GET")
p.add_argument("--promise", type=int)
p.add_argument("--send", type=int)
p.add_argument("--send-rest-after", type=float)
p.add_argument("--half-close", choices=["now", "after-head"])
p.add_argument("--read-after", type=float, default=0)
p.add_argument("--pause-after-head", type=float, default=0)
p.add_argument("--read-past-end", action="store_true")
p.add_argument("--rcvbuf", type=int)
p.add_argument("--read-bytes", type=int, default=65536)
p.add_argument("--read-delay", type=float, default=0)
p.add_argument("--timeout", type=float, default=30)
a = p.parse_args()
if a.half_close and a.tls:
    sys.exit("--half-close is for TCP (a TLS socket cannot half-close)")

raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
if a.rcvbuf:
    try:
        raw.setsockopt(socket.SOL_SOCKET, 33, a.rcvbuf)  # SO_RCVBUFFORCE (CAP_NET_ADMIN)
    except PermissionError:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
raw.settimeout(a.timeout)
raw.connect(("127.0.0.1", a.port))
local = "%s:%d" % raw.getsockname()
s = raw
if a.tls:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # A FIN without close_notify raises SSLEOFError; recv returns b"" only after close_notify.
    s = ctx.wrap_socket(raw, suppress_ragged_eofs=False)

head = f"{a.method} / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: tw-request\r\n"
if a.promise is not None:
    head += f"Content-Length: {a.promise}\r\n"
body_sent = 0
if a.promise:
    body_sent = a.promise if a.send is None else a.send
# Head and body in one send (over TLS, a short body shares the head's record): a server that
# reads the head reads the body's start too.
s.sendall((head + "\r\n").encode() + b"u" * body_sent)
late = {"sent": 0, "end": "sent"}


def send_rest():
    """The rest of the promised body, after --send-rest-after seconds."""
    time.sleep(a.send_rest_after)
    left = a.promise - body_sent
    try:
        while left > 0:
            late["sent"] += s.send(b"u" * min(left, 65536))
            left = a.promise - body_sent - late["sent"]
    except OSError as e:
        late["end"] = errno.errorcode.get(e.errno, str(e))


rest_sender = None
if a.promise and a.send_rest_after is not None:
    rest_sender = threading.Thread(target=send_rest, daemon=True)
    rest_sender.start()
if a.half_close == "now":
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


got = {"local": local, "status": None, "head_bytes": 0, "content_length": None,
       "received_bytes": 0, "complete": False, "end": None, "body_sent": body_sent}
buf, end = b"", None
while b"\r\n\r\n" not in buf and end is None:
    d, end = read()
    buf += d
if b"\r\n\r\n" in buf:
    head, _, rest = buf.partition(b"\r\n\r\n")
    if a.half_close == "after-head":
        s.shutdown(socket.SHUT_WR)
    time.sleep(a.pause_after_head)
    lines = head.decode("latin-1").split("\r\n")
    got["status"] = int(lines[0].split()[1])
    got["head_bytes"] = len(head) + 4
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            got["content_length"] = int(v)
    length, body = got["content_length"] or 0, len(rest)
    while body < length and end is None:
        d, end = read()
        body += len(d)
    got["complete"] = body >= length
    got["end"] = "complete" if got["complete"] else end
    got["received_bytes"] = got["head_bytes"] + body
    if got["complete"] and a.read_past_end:
        s.settimeout(2)
        d, after = read()
        got["after"] = after or "more bytes"
else:
    got["received_bytes"], got["end"] = len(buf), end
if rest_sender:
    rest_sender.join(timeout=a.timeout)
    got["rest_sent"], got["rest_end"] = late["sent"], late["end"]
# The TCP state then: "close_wait" after the server's FIN, "close" after its reset.
state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
got["tcp_state"] = {1: "established", 7: "close", 8: "close_wait"}.get(state, str(state))
print(json.dumps(got), flush=True)
s.close()
