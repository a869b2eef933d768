//! api-gateway-mcp: a policy gateway that lets AI agents call external HTTP APIs safely.
//!
//! Two front doors, the MCP door ([`mcp`]) and the reverse-proxy door ([`proxy`]), call one
//! admission function ([`policy::Pipeline::admit`]) and share one egress path ([`egress`]) and
//! one call record ([`call`]). [`server`] wires them into a single Pingora server.

pub mod admin;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod blobs;
pub mod call;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod egress;
pub mod error;
pub mod explain;
pub mod gateway;
pub mod kv;
pub mod listener;
pub mod mcp;
pub mod openapi;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod server;
pub mod surface;
pub mod telemetry;
pub mod trace;
pub mod types;
pub mod vault;
