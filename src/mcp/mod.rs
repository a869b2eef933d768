//! The MCP door: an rmcp [`ServerHandler`] whose tools come from config (`api_gateway`,
//! `list_apis`), the Pingora↔tower bridge that serves it over Streamable HTTP at `/mcp`, and
//! the stdio transport; a stateless `tools/call` of the common shape takes a fast path
//! (`fast`) that answers as rmcp's transport would.
//!
//! A policy denial or an upstream failure is a tool result with `isError: true` and a
//! machine-readable `error` code; protocol errors are kept for unknown tools and malformed
//! arguments.
//!
//! [`ServerHandler`]: rmcp::ServerHandler

mod approve;
mod bridge;
mod fast;
mod handler;
mod stdio;
mod tools;

pub use bridge::{http_service, McpHttpApp};
pub use handler::GatewayMcp;
pub use stdio::serve_stdio;
