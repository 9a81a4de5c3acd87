//! The agent's process: the run loop (`run`), `truncwatch check`, telling its own and other
//! agents' traffic from the host's (`self_traffic`, `other_agents`, `agent_registry`), the
//! canary, the descriptor limit and the stop watchdog (`shutdown`).
pub mod agent_registry;
pub mod canary;
pub mod check;
pub mod descriptors;
pub mod other_agents;
pub mod run;
pub mod self_traffic;
pub mod shutdown;
