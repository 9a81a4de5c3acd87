// Node.js's own idle timeout cuts slow readers: server.timeout destroys a socket that made
// no progress for that long, with the rest of the body still in Node's buffer. Node's logs
// and metrics see a completed res.end().
// Usage: node node-timeout.js PORT BODY_BYTES TIMEOUT_MS
const http = require('http');
const [port, bodyBytes, timeoutMs] = process.argv.slice(2).map(Number);
const body = Buffer.alloc(bodyBytes, 'n');
const server = http.createServer((req, res) => {
  res.setHeader('Content-Length', body.length);
  res.end(body);
});
server.timeout = timeoutMs;
server.listen(port, '127.0.0.1', () => console.error(`node: listening on ${port}`));
