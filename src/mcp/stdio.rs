//! The stdio transport of the MCP door: one session over stdin/stdout, its caller identified
//! once from the environment.

use std::sync::Arc;

use super::handler::GatewayMcp;
use crate::gateway::Live;

/// Serves the tools over stdin/stdout until the client closes the stream.
///
/// The session's caller is identified once, before serving, from `API_GATEWAY_MCP_TOKEN` or
/// `API_GATEWAY_MCP_API_KEY`; bad credentials stop the process with the reason.
pub async fn serve_stdio(live: Arc<Live>) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let caller = live
        .current()
        .pipeline
        .identify_local(&|name| std::env::var(name).ok())
        .await
        .map_err(|e| {
            // Over stdio there are no headers: say which variables carry a credential.
            let message = if e.reason == Some(crate::error::Reason::MissingCredentials) {
                "authentication is required: set API_GATEWAY_MCP_TOKEN (a bearer token) or \
                 API_GATEWAY_MCP_API_KEY in the server's environment (the MCP client's `env`)"
                    .to_string()
            } else {
                e.message.clone()
            };
            anyhow::anyhow!(
                "stdio caller not authenticated ({}): {message}",
                e.reason_code()
            )
        })?;
    let handler = GatewayMcp {
        local_caller: Some(Arc::new(caller)),
        ..GatewayMcp::new(live)
    };
    let running = handler.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}
