//! Forwarding to upstream pools: request and response bodies, hop-by-hop header handling,
//! server selection and health, the demo upstream, and error responses.

pub mod body;
pub mod echo;
pub mod error;
pub mod forward;
pub mod headers;
pub mod route;
pub mod upstream;

pub use body::{RequestBody, ResponseBody};
