//! API Gateway HTTP API events (payload format 2.0) to the EC2 Query protocol
//! and back.
//!
//! The route's IAM authorization has already checked the caller's SigV4
//! signature; the caller's account comes from `requestContext.authorizer.iam`.
//! A request without it never reached us through an IAM-authorized route, and
//! is refused rather than served as some default account.
//!
//! Each action has its own route (`POST /CreateStoreImageTask`, …), so IAM
//! grants `execute-api:Invoke` per action; a request is served only if its
//! `Action` is its route's, so a grant on one route never lets another
//! action through.

use std::sync::Arc;

use amistore_api::service::{HttpRequest, Outcome, Permission, handle_authenticated};
use amistore_core::engine::Engine;
use amistore_core::ids::AccountId;
use aws_lambda_events::apigw::{
    ApiGatewayRequestAuthorizerIamDescription, ApiGatewayV2httpRequest, ApiGatewayV2httpResponse,
};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::step::StepFailure;

/// An HTTP API (payload format 2.0) request event.
pub type HttpApiRequest = ApiGatewayV2httpRequest;

/// An HTTP API (payload format 2.0) response: the status, a content type and
/// the XML document as text.
pub type HttpApiResponse = ApiGatewayV2httpResponse;

fn reply(status: u16, content_type: &'static str, body: String) -> HttpApiResponse {
    let mut response = HttpApiResponse::default();
    response.status_code = i64::from(status);
    response.headers =
        HeaderMap::from_iter([(CONTENT_TYPE, HeaderValue::from_static(content_type))]);
    response.body = Some(Body::Text(body));
    response
}

/// A refusal before the API proper sees the request (wrong event, no
/// authorizer), as an EC2 error document.
fn refuse(status: u16, code: &'static str, message: &str) -> HttpApiResponse {
    let error = amistore_api::ApiError {
        code: code.into(),
        message: message.to_owned(),
        status,
    };
    let id = amistore_core::ids::unique_token()[..36].to_owned();
    reply(
        status,
        "text/xml;charset=UTF-8",
        amistore_api::xml::error_document(&error, &id),
    )
}

/// Answers the HTTP API request in a Lambda event's payload (see [`answer`]);
/// a payload that is not one is a `Fatal` failure.
pub async fn answer_event(
    engine: Arc<Engine>,
    payload: serde_json::Value,
    actions: &'static [&'static str],
) -> Result<HttpApiResponse, StepFailure> {
    let request: HttpApiRequest = serde_json::from_value(payload).map_err(|e| StepFailure {
        name: amistore_core::engine::steps::FATAL,
        cause: format!("the event is not an HTTP API (2.0) request: {e}"),
    })?;
    Ok(answer(engine, request, actions).await)
}

/// The action a route serves: `POST /CreateStoreImageTask` serves
/// CreateStoreImageTask, if it is one of `actions` (the function's).
fn route_action(
    route_key: &str,
    actions: &'static [&'static str],
) -> Option<&'static [&'static str]> {
    let name = route_key.strip_prefix("POST /")?;
    let i = actions.iter().position(|a| *a == name)?;
    Some(&actions[i..=i])
}

/// Answers one HTTP API request as the EC2 Query API: the action its route
/// names, if that is one of `actions`. Logs one JSON line per request.
pub async fn answer(
    engine: Arc<Engine>,
    event: HttpApiRequest,
    actions: &'static [&'static str],
) -> HttpApiResponse {
    if event.version.as_deref() != Some("2.0") {
        return refuse(
            400,
            "InvalidRequest",
            &format!(
                "payload format {} is not supported; configure the integration for 2.0",
                event.version.as_deref().unwrap_or("(none)")
            ),
        );
    }
    let Some(identity) = event
        .request_context
        .authorizer
        .as_ref()
        .and_then(|a| a.iam.as_ref())
    else {
        return refuse(
            401,
            "AuthFailure",
            "the request was not authenticated: the route must use IAM authorization",
        );
    };
    let account: AccountId = match identity.account_id.as_deref().unwrap_or("").parse() {
        Ok(a) => a,
        Err(_) => return refuse(401, "AuthFailure", "the caller's account id is not valid"),
    };
    let route_key = event.route_key.as_deref().unwrap_or("");
    let Some(route) = route_action(route_key, actions) else {
        return refuse(
            404,
            "InvalidAction",
            &format!(
                "route {route_key:?} serves none of this function's actions ({})",
                actions.join(", ")
            ),
        );
    };
    let permission = Permission::Only(route);
    let body = match (event.body.as_deref(), event.is_base64_encoded) {
        (None, _) => Vec::new(),
        (Some(b), false) => b.as_bytes().to_vec(),
        (Some(b), true) => match BASE64.decode(b) {
            Ok(bytes) => bytes,
            Err(_) => return refuse(400, "MalformedQueryString", "the body is not valid base64"),
        },
    };
    let request = HttpRequest {
        method: event.request_context.http.method.to_string(),
        path: event.raw_path.clone().unwrap_or_default(),
        query: event.raw_query_string.clone().unwrap_or_default(),
        headers: headers_as_text(&event.headers),
        body,
    };
    let started = std::time::Instant::now();
    let answered = tokio::task::spawn_blocking(move || {
        handle_authenticated(&engine, &request, &account, permission)
    })
    .await;
    let (response, outcome) = match answered {
        Ok(answer) => answer,
        Err(e) => {
            return refuse(
                500,
                "InternalError",
                &format!("the request handler failed: {e}"),
            );
        }
    };
    log(
        &event,
        identity,
        &outcome,
        response.status,
        started.elapsed(),
    );
    reply(
        response.status,
        response.content_type,
        response.body_text().into_owned(),
    )
}

/// The headers as (lowercase name, text) pairs, as the API reads them. API
/// Gateway passes a header's value as JSON text; bytes that are not UTF-8
/// could only have come from elsewhere, and are replaced.
fn headers_as_text(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), text)
        })
        .collect()
}

fn log(
    event: &HttpApiRequest,
    identity: &ApiGatewayRequestAuthorizerIamDescription,
    outcome: &Outcome,
    status: u16,
    took: std::time::Duration,
) {
    tracing::info!(
        event = "request",
        requestId = outcome.request_id,
        apiGatewayRequestId = event.request_context.request_id,
        action = outcome.action.as_deref(),
        account = outcome.account.as_ref().map(|a| a.as_str()),
        caller = identity.user_arn,
        status,
        error = outcome.error.as_deref(),
        detail = outcome.detail.as_deref(),
        ms = took.as_millis() as u64,
    );
}
