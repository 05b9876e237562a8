//! gateway: a TLS front door for web applications.
//!
//! Requests arrive on [`server`] listeners, pass the phases in [`pipeline`] and are
//! forwarded by [`proxy`]. Config is read by [`config`] and compiled into a
//! [`runtime::Runtime`] that the request path only reads; [`app`] starts, reloads and stops
//! the whole; [`admin`] is the operator's side port.

pub mod admin;
pub mod alerts;
pub mod app;
pub mod bans;
pub mod canonical;
pub mod client_ip;
pub mod cluster;
pub mod config;
pub mod events;
pub mod ip_rules;
pub mod metrics;
pub mod network;
pub mod pipeline;
pub mod posture;
pub mod proxy;
pub mod rate_limit;
pub mod request_id;
pub mod routing;
pub mod runtime;
pub mod schedule;
pub mod secrets;
pub mod server;
pub mod session;
pub mod tls;
pub mod waf;

pub use app::{check_config, compile_config, Gateway, StartError};
