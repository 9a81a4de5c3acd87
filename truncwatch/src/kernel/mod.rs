//! The kernel side: loading the programs and attaching a hook backend (`load`), decoding
//! their records into the judge's events (`decode`), the running kernel's layouts
//! (`btf_offsets`, read with `btf_reader`) and timer frequency (`kernel_hz`), and the TLS
//! uprobes (`tls_hooks`, planned by `tls_plan`, attached through `uprobe_events`).
pub mod btf_offsets;
pub mod btf_reader;
pub mod decode;
pub mod kernel_hz;
pub mod load;
pub mod tls_hooks;
pub mod tls_plan;
pub mod uprobe_events;
