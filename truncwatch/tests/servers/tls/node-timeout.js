// Node.js's HTTPS server cutting a slow reader: server.timeout destroys a socket that made no
// progress for that long, with the rest of the body still in Node's buffers (Node bundles
// OpenSSL and writes its records through a memory BIO).
// Usage: node node-timeout.js PORT CERT KEY BODY_BYTES TIMEOUT_MS
const https = require('https');
const fs = require('fs');
const [port, cert, key, bodyBytes, timeoutMs] = process.argv.slice(2);
const body = Buffer.alloc(Number(bodyBytes), 'n');
const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
  res.setHeader('Content-Length', body.length);
  res.end(req.method === 'HEAD' ? undefined : body);
});
server.timeout = Number(timeoutMs);
server.listen(Number(port), '127.0.0.1', () => console.error(`node: listening on ${port}`));
