//! Verdicts leaving the agent: one human or JSON line each (`output`, at most so many a second
//! per owner: `line_budget`), Prometheus metrics (`metrics`), and the HTTP endpoint that serves them with readiness (`endpoint`).
pub mod endpoint;
pub mod line_budget;
pub mod metrics;
pub mod output;
