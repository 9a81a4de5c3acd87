//! truncwatch: flags HTTP/1 responses whose connection ended before every promised byte was
//! handed to the kernel, by watching the kernel's socket send and close paths.
//!
//! The folders are the stages a send goes through (docs/architecture.md):
//! `kernel` (hooks and records) -> `judge` (pure: events in, verdicts out) -> `owner` (whose
//! connection it was) -> `export` (lines, metrics, endpoint); `agent` wires them together.
/// The agent's process: the run loop, `truncwatch check`, its own traffic, the canary, the stop.
pub mod agent;
/// Strings other processes control, made safe to print (used by several stages).
pub mod escape;
/// Verdicts leaving the agent: human and JSON lines, Prometheus metrics, the HTTP endpoint.
pub mod export;
/// Pure judgement: events in, verdicts out (HTTP framing, requests, responses, TLS marks).
pub mod judge;
/// The kernel side: loading and attaching the programs, decoding records, BTF, TLS hooks.
pub mod kernel;
/// Reproduces truncations on purpose: a test server and client (`truncwatch lab`).
pub mod lab;
/// Who owns a connection: cgroup and container attribution, build identity, container images.
pub mod owner;
/// Bounded reads of files other processes control (used by `kernel` and `owner`).
pub mod untrusted;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod test_root;
