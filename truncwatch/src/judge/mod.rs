//! Pure judgement: kernel events in, per-response verdicts out. No I/O, no clocks, nothing
//! from `kernel` or `export`. `correlator` drives it (each connection's state in
//! `correlator::conn`), using `http_head` for framing (`partial_head` gathering heads that come in pieces), `requests` to match responses to
//! requests, `response` for what each response became (`peer_end` naming how the peer ended)
//! and `cipher_marks` for TLS; `events` is what it takes, `verdict` what it decides.
pub mod cipher_marks;
pub mod correlator;
pub mod events;
pub mod http_head;
pub mod partial_head;
pub mod peer_end;
pub mod requests;
pub mod response;
pub mod verdict;
