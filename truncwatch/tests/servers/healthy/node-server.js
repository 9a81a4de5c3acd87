// Healthy traffic from Node.js's own http server, which the agent must never blame on it:
// - GET /small: 1 KiB with Content-Length, on keep-alive connections that the server closes
//   once idle for server.keepAliveTimeout (KEEPALIVE_MS, small here). A client that sends its
//   next request right around that timeout races the close: the request gets no answer (the
//   client reads EOF or a reset before any head), yet every answer sent was whole.
// - POST /upload with `Expect: 100-continue`: Node answers `100 Continue` by itself (no
//   'checkContinue' listener), reads the whole body, then answers 200 with Content-Length.
// - GET or HEAD /doc: 200 with an ETag and Content-Length; HEAD answers carry the
//   Content-Length but no body. With a matching If-None-Match: 304 Not Modified, with the
//   Content-Length of the 200 (RFC 9110 §8.6 allows it) and no body.
// Every answer carries the extra headers given as a JSON array of [name, value] pairs, to make
// heads short, long or huge.
// Usage: node node-server.js PORT KEEPALIVE_MS [HEADERS_JSON]
const http = require('http');
const [port, keepAliveMs] = process.argv.slice(2, 4).map(Number);
const extra = JSON.parse(process.argv[4] || '[]');
const small = Buffer.alloc(1024, 's');
const doc = Buffer.alloc(5000, 'd');
const etag = '"doc-v1"';

// Repeated names (Set-Cookie) become one array, as setHeader wants them.
const headers = {};
for (const [name, value] of extra) {
  const key = name.toLowerCase();
  headers[key] = key in headers ? [].concat(headers[key], value) : value;
}

function send(res, status, body, length = body.length) {
  res.statusCode = status;
  for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
  res.setHeader('Content-Length', length);
  res.end(status === 304 ? undefined : body);
}

const server = http.createServer((req, res) => {
  if (req.url === '/upload') {
    let got = 0;
    req.on('data', (chunk) => { got += chunk.length; });
    req.on('end', () => send(res, 200, Buffer.from(`received ${got} bytes\n`)));
  } else if (req.url === '/doc') {
    res.setHeader('ETag', etag);
    if (req.headers['if-none-match'] === etag) send(res, 304, Buffer.alloc(0), doc.length);
    else send(res, 200, doc);
  } else {
    send(res, 200, small);
  }
});
server.keepAliveTimeout = keepAliveMs;
server.listen(port, '127.0.0.1', () => console.error(`node: listening on ${port}`));
