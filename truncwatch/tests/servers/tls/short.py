"""A Python `ssl` HTTPS server that promises a body and ends the stream early, or resets it.
Each connection gets one response: a head of about HEAD_BYTES (padded with a cookie), then
SEND_BYTES of the promised PROMISE_BYTES body, written in 16 KiB writes (one TLS record each);
then `close` closes the connection (close_notify and FIN), `reset` waits RESET_AFTER seconds
and resets it (SO_LINGER 0) with bytes still unacknowledged.

Usage: short.py PORT CERT KEY PROMISE_BYTES SEND_BYTES HEAD_BYTES close|reset [RESET_AFTER]
"""
import socket, ssl, struct, sys, threading, time

port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
promise, send, head_bytes = map(int, sys.argv[4:7])
end = sys.argv[7]
reset_after = float(sys.argv[8]) if len(sys.argv) > 8 else 1.0
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(64)

def head():
    h = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {promise}\r\n"
    pad = head_bytes - len(h) - len("Set-Cookie: s=\r\n\r\n")
    if pad > 0:
        h += "Set-Cookie: s=" + "c" * pad + "\r\n"
    return (h + "\r\n").encode()

def serve(c):
    try:
        s = ctx.wrap_socket(c, server_side=True)
        req = b""
        while b"\r\n\r\n" not in req:
            d = s.recv(65536)
            if not d:
                return
            req += d
        s.sendall(head())
        chunk = b"x" * 16384
        left = send
        while left > 0:
            n = min(left, len(chunk))
            s.sendall(chunk[:n])
            left -= n
        if end == "reset":
            time.sleep(reset_after)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except (ConnectionError, ssl.SSLError):
        pass

print(f"tls server listening on {port}", file=sys.stderr, flush=True)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
