// Node's built-in fetch (undici) reading one response from https://127.0.0.1:PORT/, as an
// application would, slowly: one JSON line with the status, the body bytes it read, whether the
// body was whole, and the error code that ended it (e.g. UND_ERR_RES_CONTENT_LENGTH_MISMATCH).
// With --promise N --send M it POSTs, promising N body bytes (Content-Length) and sending M of
// them, then leaving the stream open (an upload the server does not wait for).
// The server's certificate is not checked: run with NODE_TLS_REJECT_UNAUTHORIZED=0.
//
// Usage: node node-fetch.js PORT [--promise N --send M] [--read-delay MS]
const { parseArgs } = require('util');
const { values: o, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    promise: { type: 'string' },
    send: { type: 'string', default: '0' },
    'read-delay': { type: 'string', default: '0' },
  },
});
const port = Number(positionals[0]);
const delay = Number(o['read-delay']);
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

async function main() {
  const init = { method: 'GET' };
  if (o.promise !== undefined) {
    const part = new Uint8Array(Number(o.send)).fill(117);
    init.method = 'POST';
    init.headers = { 'content-length': o.promise };
    // Never closed: the rest of the promised body never comes.
    init.body = new ReadableStream({ start: (c) => c.enqueue(part) });
    init.duplex = 'half';
  }
  const got = { status: 0, body_bytes: 0, complete: false, code: null };
  try {
    const res = await fetch(`https://127.0.0.1:${port}/`, init);
    got.status = res.status;
    const reader = res.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      got.body_bytes += value.length;
      if (delay) await sleep(delay);
    }
    got.complete = true;
  } catch (e) {
    got.code = (e.cause && e.cause.code) || e.code || e.name;
  }
  console.log(JSON.stringify(got));
  // The open upload would keep the process alive.
  process.exit(0);
}
main();
