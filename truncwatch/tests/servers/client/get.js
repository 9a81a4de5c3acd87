// Node's http.get fetching PATH from 127.0.0.1:PORT: prints one JSON line with the status, the
// body bytes it got, and whether the response ended whole ('end') or was cut ('aborted',
// an error).
//
// Usage: node get.js PORT PATH
const http = require('http');
const [port, path] = process.argv.slice(2);
let got = 0, status = 0, done = false;
const report = (complete) => {
  if (done) return;
  done = true;
  console.log(JSON.stringify({ status, body_bytes: got, complete }));
};
const req = http.get({ host: '127.0.0.1', port: Number(port), path }, (res) => {
  status = res.statusCode;
  res.on('data', (c) => { got += c.length; });
  res.on('end', () => report(res.complete));
  res.on('aborted', () => report(false));
  res.on('error', () => report(false));
  res.on('close', () => report(res.complete));
});
req.on('error', () => report(false));
