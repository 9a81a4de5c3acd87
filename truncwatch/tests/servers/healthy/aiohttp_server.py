"""Healthy traffic from aiohttp (Debian's python3-aiohttp), which the agent must never blame
on the server:

- GET /events: server-sent events, an open-ended chunked stream (`data: ...` every 100 ms,
  for at most 30 s). The client gives up after a while and closes; the stream was never
  going to end by itself, so the server did nothing wrong.
- POST /upload with `Expect: 100-continue`: aiohttp's default expect handler answers
  `100 Continue` before the handler runs; the handler reads the whole body and answers 200
  with Content-Length.
- GET or HEAD /doc: 200 with an ETag and Content-Length; HEAD answers carry the
  Content-Length but no body. With a matching If-None-Match: 304 Not Modified, whose
  Content-Length aiohttp sets from the body it then does not send.

Every answer carries the extra headers given as a JSON array of [name, value] pairs, to make
heads short, long or huge.

Usage: python3 aiohttp_server.py PORT [HEADERS_JSON]
"""
import asyncio
import json
import sys

from aiohttp import web
from multidict import CIMultiDict

PORT = int(sys.argv[1])
EXTRA = CIMultiDict(json.loads(sys.argv[2]) if len(sys.argv) > 2 else [])
DOC = b"d" * 5000
ETAG = '"doc-v1"'


async def events(request):
    resp = web.StreamResponse(headers=EXTRA)
    resp.content_type = "text/event-stream"
    resp.headers["Cache-Control"] = "no-cache"
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for n in range(300):
        await resp.write(f"id: {n}\ndata: tick {n}\n\n".encode())
        await asyncio.sleep(0.1)
    await resp.write_eof()
    return resp


async def upload(request):
    body = await request.read()
    return web.Response(body=f"received {len(body)} bytes\n".encode(), headers=EXTRA)


async def doc(request):
    headers = CIMultiDict(EXTRA)
    headers["ETag"] = ETAG
    status = 304 if request.headers.get("If-None-Match") == ETAG else 200
    return web.Response(status=status, body=DOC, headers=headers)


app = web.Application()
app.router.add_get("/events", events)
app.router.add_post("/upload", upload)
app.router.add_get("/doc", doc)
print(f"aiohttp: listening on {PORT}", file=sys.stderr, flush=True)
web.run_app(app, host="127.0.0.1", port=PORT, print=None, access_log=None)
