//! The MCP door's side of approvals: a call that waits for a person becomes what the
//! client can take.
//! - `self` rules: the calling user confirms through a form elicitation, as an
//!   `input_required` result (2026-07-28, request state sealed to the caller, the arguments
//!   and the approval) or an `elicitation/create` during the call (legacy sessions).
//! - `external` rules, for clients that declare the tasks extension: a task, `working` until
//!   an approver decides, then `completed` with the call's result (or an `isError` result
//!   when denied or expired); `tasks/cancel` withdraws the request.
//! - Anyone else: the `approval_pending` refusal, with the id and when to call again.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolResponse, CallToolResult, CreateTaskResult, ElicitRequest, ElicitRequestParams,
    ElicitResult, ElicitationAction, ElicitationSchema, InputRequest, InputRequests,
    InputRequiredResult, ProtocolVersion, SealOptions,
};
use rmcp::service::RequestContext;
use rmcp::task_manager::{TaskExit, TaskOptions};
use rmcp::{ErrorData as McpError, RoleServer};
use serde_json::{json, Value};

use super::handler::{tool_error, ApiGatewayArgs, GatewayMcp};
use crate::error::{GatewayError, Reason};
use crate::policy::Caller;

/// The key of the confirmation in `inputRequests` / `inputResponses`.
pub const APPROVE_INPUT: &str = "approve";

fn detail<'e>(e: &'e GatewayError, key: &str) -> Option<&'e str> {
    e.details.as_ref()?.get(key)?.as_str()
}

fn confirm_form(args: &ApiGatewayArgs, summary: &str) -> Result<ElicitRequestParams, McpError> {
    let schema = ElicitationSchema::builder()
        .required_bool_property("confirm", |b| b.title("Run this call?"))
        .string_property("reason", |s| {
            s.description("Why (recorded with the decision)")
                .max_length(500)
        })
        .build()
        .map_err(|e| McpError::internal_error(format!("confirmation form: {e}"), None))?;
    Ok(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: format!(
            "Confirm this call before it runs: {} {} on API {:?}.{summary}",
            args.method.to_ascii_uppercase(),
            args.endpoint(),
            args.api
        ),
        requested_schema: schema,
    })
}

/// Whether an elicitation answer confirms, and the reason given.
fn confirmed(r: &ElicitResult) -> (bool, Option<String>) {
    let content = r.content.as_ref();
    let yes = r.action == ElicitationAction::Accept
        && content
            .and_then(|c| c.get("confirm"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let reason = content
        .and_then(|c| c.get("reason"))
        .and_then(Value::as_str)
        .map(|s| s.chars().take(500).collect());
    (yes, reason)
}

impl GatewayMcp {
    /// The retry of an `input_required` confirmation: the user's answer decides the
    /// request. `None`: confirmed, run the call (which uses the approval); `Some`: the
    /// answer to return instead (declined, or the approval was used or has expired).
    pub(super) async fn answer_confirmation(
        &self,
        state: &Value,
        responses: Option<&rmcp::model::InputResponses>,
        caller: &Caller,
    ) -> Option<CallToolResponse> {
        let shown = self.gateway.config.explain_denials;
        let id = state["id"].as_str().unwrap_or("");
        let answer = responses
            .and_then(|r| r.get(APPROVE_INPUT))
            .and_then(|v| serde_json::from_value::<ElicitResult>(v.clone()).ok());
        let (yes, reason) = answer.as_ref().map_or((false, None), confirmed);
        let decided = self
            .gateway
            .pipeline
            .decide_approval(id, yes, &caller.principal, reason, "mcp")
            .await;
        match decided {
            Ok(_) if yes => None,
            Ok(_) => Some(tool_error(&declined(id), shown).into()),
            Err(e) => Some(tool_error(&e, shown).into()),
        }
    }

    /// A call that waits for approval, answered the way the client can take it; `None`:
    /// the client can do neither, and the `approval_pending` refusal stands.
    pub(super) async fn ask_to_approve(
        &self,
        e: &GatewayError,
        args: &ApiGatewayArgs,
        caller: &Arc<Caller>,
        context: &RequestContext<RoleServer>,
        bound: &str,
    ) -> Result<Option<CallToolResponse>, McpError> {
        let Some(id) = detail(e, "approval_id").map(str::to_string) else {
            return Ok(None);
        };
        let modern = context
            .protocol_version()
            .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28);
        let caps = context.client_capabilities();
        match detail(e, "approval_mode") {
            Some("self") => {
                let summary = self.summary_line(&id).await;
                let form = confirm_form(args, &summary)?;
                if modern {
                    let forms = caps
                        .as_ref()
                        .and_then(|c| c.elicitation.as_ref())
                        .is_some_and(|el| el.form.is_some() || el.url.is_none());
                    if !forms {
                        return Ok(None);
                    }
                    let expires = self.expiry(&id).await;
                    let state = self
                        .state_codec()?
                        .seal_json_with(
                            &json!({"k": "approve", "id": id}),
                            &SealOptions::new()
                                .associated_data(bound.as_bytes())
                                .ttl(expires),
                        )
                        .map_err(|_| {
                            McpError::internal_error("could not seal the request state", None)
                        })?;
                    let mut requests = InputRequests::new();
                    requests.insert(
                        APPROVE_INPUT.to_string(),
                        InputRequest::Elicitation(ElicitRequest::new(form)),
                    );
                    return Ok(Some(
                        InputRequiredResult::new(Some(requests), Some(state)).into(),
                    ));
                }
                if !self.session_elicits(context, rmcp::service::ElicitationMode::Form) {
                    return Ok(None);
                }
                let expires = self.expiry(&id).await;
                let asked = tokio::select! {
                    r = context.peer.create_elicitation_with_timeout(form, Some(expires)) => r,
                    _ = context.ct.cancelled() => return Ok(None),
                };
                let shown = self.gateway.config.explain_denials;
                let (yes, reason) = match &asked {
                    Ok(r) => confirmed(r),
                    Err(_) => return Ok(None),
                };
                let decided = self
                    .gateway
                    .pipeline
                    .decide_approval(&id, yes, &caller.principal, reason, "mcp")
                    .await;
                let result = match decided {
                    Ok(_) if yes => match self
                        .run_api_gateway(args.clone(), caller, &context.id.to_string())
                        .await
                    {
                        Ok(a) => a.into_result(),
                        Err(e) => tool_error(&e, shown),
                    },
                    Ok(_) => tool_error(&declined(&id), shown),
                    Err(e) => tool_error(&e, shown),
                };
                Ok(Some(result.into()))
            }
            Some("external") if caps.as_ref().is_some_and(|c| c.supports_tasks()) => Ok(Some(
                self.approval_task(id, args.clone(), caller.clone()).await,
            )),
            _ => Ok(None),
        }
    }

    /// A task that waits for the external decision on `id`, then runs the call once.
    async fn approval_task(
        &self,
        id: String,
        args: ApiGatewayArgs,
        caller: Arc<Caller>,
    ) -> CallToolResponse {
        let wait = self.expiry(&id).await;
        let me = self.clone();
        let owner = caller.principal.id.clone();
        let task = self.live.tasks.spawn(
            TaskOptions::new()
                .with_ttl_ms(wait.as_millis() as u64 + 600_000)
                .with_poll_interval_ms(1_000)
                .with_status_message(format!("waiting for approval {id}")),
            move |ctx| {
                Box::pin(async move {
                    let shown = me.gateway.config.explain_denials;
                    loop {
                        let rec = me.gateway.pipeline.approval_record(&id).await;
                        let status = match &rec {
                            Ok(Some(r)) => r.effective(now_s()),
                            _ => crate::approvals::Status::Expired,
                        };
                        match status {
                            crate::approvals::Status::Pending => {}
                            crate::approvals::Status::Approved => {
                                let request_id = format!("task:{}", ctx.task_id());
                                return Ok(match me.run_api_gateway(args, &caller, &request_id).await {
                                    Ok(a) => a.into_result(),
                                    Err(e) => tool_error(&e, shown),
                                });
                            }
                            other => {
                                let e = match rec {
                                    Ok(Some(r)) => crate::policy::approval::unusable(&r, other),
                                    _ => GatewayError::because(Reason::ApprovalExpired, "the approval request is gone"),
                                };
                                return Ok::<CallToolResult, TaskExit>(tool_error(&e, shown));
                            }
                        }
                        tokio::select! {
                            _ = ctx.cancelled() => {
                                // Withdrawn by the requester: the request is denied.
                                let _ = me.gateway.pipeline.withdraw_approval(&id, &caller.principal).await;
                                return Err(TaskExit::Cancelled);
                            }
                            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        }
                    }
                })
            },
        );
        let mut owners = self
            .live
            .task_owners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if owners.len() >= 10_000 {
            // Tasks the manager has let go of need no owner.
            owners.retain(|id, _| self.live.tasks.get_task(id).is_ok());
        }
        owners.insert(task.task_id.clone(), owner);
        drop(owners);
        CallToolResponse::Task(CreateTaskResult::new(task))
    }

    /// How long the request `id` may still wait (at least a second).
    async fn expiry(&self, id: &str) -> Duration {
        let left = match self.gateway.pipeline.approval_record(id).await {
            Ok(Some(r)) => r.expires.saturating_sub(now_s()),
            _ => 0,
        };
        Duration::from_secs(left.max(1))
    }

    /// The approver's summary of `id`, as one line for a form's message.
    async fn summary_line(&self, id: &str) -> String {
        match self.gateway.pipeline.approval_record(id).await {
            Ok(Some(r)) if r.summary.as_object().is_some_and(|o| !o.is_empty()) => {
                format!(" Details: {}", r.summary)
            }
            _ => String::new(),
        }
    }

    /// Whether `principal` owns task `id` (tasks are visible to the caller that made them).
    pub(super) fn owns_task(&self, id: &str, principal: &str) -> bool {
        self.live
            .task_owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|p| p == principal)
    }
}

fn declined(id: &str) -> GatewayError {
    GatewayError::because(
        Reason::ApprovalDeclined,
        format!("the user declined the call (approval {id})"),
    )
    .with_detail("approval_id", json!(id))
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
