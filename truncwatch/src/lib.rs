//! truncwatch: flags HTTP/1 responses whose connection ended before every promised byte was
//! handed to the kernel, by watching the kernel's socket send and close paths.
//!
//! Layout: `events` (what the kernel reports) -> `correlator` (pure: events in, verdicts out,
//! using `http_head` for framing, `requests` to match responses to requests and `response` for
//! what each response became) -> `output`. `agent` loads the kernel programs and wires
//! these together; `btf_offsets` reads the running kernel's struct layouts; `lab` reproduces
//! truncations on purpose.
pub mod agent;
pub mod agent_registry;
pub mod attribution;
pub mod btf_offsets;
pub mod btf_reader;
pub mod build_identity;
pub mod canary;
pub mod check;
pub mod cipher_marks;
pub mod container_image;
pub mod correlator;
pub mod descriptors;
pub mod endpoint;
pub mod escape;
pub mod events;
pub mod http_head;
pub mod kernel_hz;
pub mod lab;
pub mod metrics;
pub mod other_agents;
pub mod output;
pub mod requests;
pub mod response;
pub mod self_traffic;
pub mod shutdown;
pub mod tls_hooks;
pub mod tls_plan;
pub mod untrusted;
pub mod uprobe_events;
pub mod verdict;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod test_root;
