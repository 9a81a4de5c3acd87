"""A TLS HTTP/1.1 client that records what it got: one JSON line per response on stdout,
{"status", "head_bytes", "received_bytes" (head + body plaintext bytes), "complete"}.
Requests go one after another on one keep-alive connection; a response ends at its
Content-Length (or, for HEAD, with its head) or when the server ends the stream.

Usage: fetch.py PORT PATH [--method M] [--requests N] [--stall-after BYTES --stall SECONDS]
"""
import argparse, json, socket, ssl, time

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("path")
p.add_argument("--method", default="GET")
p.add_argument("--requests", type=int, default=1)
p.add_argument("--stall-after", type=int, default=-1)
p.add_argument("--stall", type=float, default=0)
a = p.parse_args()

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", a.port)))

def more():
    """The next bytes, or b"" at the end of the stream (a reset included: what came counts)."""
    try:
        return s.recv(65536)
    except (ConnectionError, ssl.SSLError):
        return b""


buf = b""
stalled = False
for _ in range(a.requests):
    s.sendall(f"{a.method} {a.path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: tls-fetch\r\n\r\n".encode())
    got = {"status": None, "head_bytes": 0, "received_bytes": 0, "complete": False}
    while b"\r\n\r\n" not in buf:
        d = more()
        if not d:
            break
        buf += d
    if b"\r\n\r\n" not in buf:
        got["received_bytes"] = len(buf)
        print(json.dumps(got), flush=True)
        break
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    got["status"] = int(lines[0].split()[1])
    got["head_bytes"] = len(head) + 4
    length = 0
    for l in lines[1:]:
        k, _, v = l.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    if a.method == "HEAD":
        length = 0
    body = 0
    while True:
        take = min(len(buf), length - body)
        body += take
        buf = buf[take:]
        if body >= length:
            break
        if not stalled and a.stall_after >= 0 and body >= a.stall_after:
            stalled = True
            time.sleep(a.stall)
        d = more()
        if not d:
            break
        buf += d
    got["received_bytes"] = got["head_bytes"] + body
    got["complete"] = body == length
    print(json.dumps(got), flush=True)
    if not got["complete"]:
        break
s.close()
