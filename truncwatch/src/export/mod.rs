//! Verdicts leaving the agent: one human or JSON line each (`output`), Prometheus metrics
//! (`metrics`), and the HTTP endpoint that serves them with readiness (`endpoint`).
pub mod endpoint;
pub mod metrics;
pub mod output;
