"""Python's http.client fetching PATH from 127.0.0.1:PORT, as an application would: prints one
JSON line with the status, the body bytes it got, and whether the body was whole.
With --close-after N it stops reading after N body bytes and closes (a client that has seen
enough).

Usage: get.py PORT PATH [--close-after N]
"""
import http.client, json, sys

port, path = int(sys.argv[1]), sys.argv[2]
close_after = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--close-after" else None
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
conn.request("GET", path)
r = conn.getresponse()
got, complete = 0, False
try:
    if close_after is None:
        # Read to the end: http.client raises IncompleteRead if the body is cut short.
        got = len(r.read())
        complete = True
    else:
        while got < close_after:
            chunk = r.read(min(65536, close_after - got))
            if not chunk:
                break
            got += len(chunk)
except http.client.IncompleteRead as e:
    got = len(e.partial)
conn.close()
print(json.dumps({"status": r.status, "body_bytes": got, "complete": complete}))
