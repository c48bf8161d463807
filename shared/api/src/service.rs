//! One HTTP request in, one HTTP response out: authentication (SigV4 against
//! the configured credentials, which map access keys to accounts), parameter
//! parsing, the action, and the XML answer. Free of any HTTP library, so the
//! local server and a Lambda front end share it.

use std::collections::BTreeMap;
use std::sync::Arc;

use amistore_core::engine::Engine;
use amistore_core::ids::{AccountId, unique_token};
use amistore_core::ports::BucketAdmin;
use time::OffsetDateTime;

use crate::query::{MAX_REQUEST_BYTES, Params};
use crate::sigv4::{SignedRequest, signed_service, verify, verify_checksummed, verify_for};
use crate::xml::{Body, error_document, json_error_document};

const XML: &str = "text/xml;charset=UTF-8";
const JSON: &str = "application/json";
use crate::{ApiError, actions, ebs, s3};

/// An HTTP request, as the server received it.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// Method.
    pub method: String,
    /// Path, still percent-encoded.
    pub path: String,
    /// Query string without `?`.
    pub query: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status.
    pub status: u16,
    /// `text/xml;charset=UTF-8`, `application/json` or (a snapshot block)
    /// `application/octet-stream`.
    pub content_type: &'static str,
    /// Headers besides Content-Type (the EBS direct APIs answer some fields
    /// in headers).
    pub headers: Vec<(String, String)>,
    /// XML, JSON or block data.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A text answer with no extra headers.
    pub fn text(status: u16, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    /// The body as text (XML and JSON answers are UTF-8).
    pub fn body_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// How a request is framed, and so its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// EC2's: a form body (or query string), XML answers.
    Ec2Query,
    /// The deployed API's AWS CLI model (`infra/cli`): `POST /<Action>` with a
    /// JSON body, JSON answers.
    RestJson,
}

impl Protocol {
    /// The protocol a request speaks: JSON bodies are the rest-json model's.
    pub fn of(req: &HttpRequest) -> Self {
        let json = req.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("content-type")
                && (v.starts_with("application/json") || v.starts_with("application/x-amz-json"))
        });
        if json {
            Protocol::RestJson
        } else {
            Protocol::Ec2Query
        }
    }
}

/// What one request did, for the server's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The request id sent back.
    pub request_id: String,
    /// The action, if the request named one.
    pub action: Option<String>,
    /// The caller's account, once authenticated.
    pub account: Option<AccountId>,
    /// The error code, if it failed.
    pub error: Option<std::borrow::Cow<'static, str>>,
    /// What went wrong on the server's side, for its log only: callers of a
    /// 5xx answer get a generic message naming the request id.
    pub detail: Option<String>,
}

impl Outcome {
    /// A request under a fresh request id, nothing known yet.
    fn new() -> Self {
        Self {
            request_id: unique_token()[..36].to_owned(),
            action: None,
            account: None,
            error: None,
            detail: None,
        }
    }
}

/// What an access key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Every action.
    Full,
    /// Only the `Describe…` actions; anything else (DryRun included) is
    /// `UnauthorizedOperation`.
    ReadOnly,
    /// Only these actions (a route that serves one action): anything else is
    /// `UnauthorizedOperation`.
    Only(&'static [&'static str]),
}

/// Access keys and the secrets, accounts and permissions they stand for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    keys: BTreeMap<String, (String, AccountId, Permission)>,
}

/// The credentials local use runs with when none are configured (documented;
/// accepted only while the server listens on loopback).
pub const DEFAULT_ACCESS_KEY: &str = "test";
/// The secret of [`DEFAULT_ACCESS_KEY`].
pub const DEFAULT_SECRET: &str = "test";

impl Credentials {
    /// Parses a credentials file: one `ACCESS_KEY SECRET ACCOUNT_ID [read-only]`
    /// per line; blank lines and lines starting with `#` are ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (key, secret, account, permission) = match fields.as_slice() {
                [k, s, a] => (k, s, a, Permission::Full),
                [k, s, a, "read-only"] => (k, s, a, Permission::ReadOnly),
                _ => {
                    return Err(format!(
                        "line {}: expected ACCESS_KEY SECRET ACCOUNT_ID [read-only]",
                        n + 1
                    ));
                }
            };
            let account: AccountId = account
                .parse()
                .map_err(|e| format!("line {}: {e}", n + 1))?;
            if keys
                .insert(key.to_string(), (secret.to_string(), account, permission))
                .is_some()
            {
                return Err(format!("line {}: access key {key} is given twice", n + 1));
            }
        }
        if keys.is_empty() {
            return Err("no credentials are configured".into());
        }
        Ok(Self { keys })
    }

    /// `test`/`test` for the local default account.
    pub fn local_default() -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(
            DEFAULT_ACCESS_KEY.to_owned(),
            (
                DEFAULT_SECRET.to_owned(),
                AccountId::local_default(),
                Permission::Full,
            ),
        );
        Self { keys }
    }

    fn secret(&self, key: &str) -> Option<String> {
        self.keys.get(key).map(|(s, _, _)| s.clone())
    }

    fn account(&self, key: &str) -> Option<(AccountId, Permission)> {
        self.keys.get(key).map(|(_, a, p)| (a.clone(), *p))
    }
}

/// Which `Host` header values a service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPolicy {
    /// Any: the server is reached by a name only its operator knows.
    Any,
    /// Only loopback names (`localhost`, 127.0.0.0/8, `::1`): a server with
    /// public default credentials must not answer a page that rebinds its
    /// own name to 127.0.0.1.
    Loopback,
}

/// The API over an engine.
pub struct Service {
    engine: Arc<Engine>,
    credentials: Credentials,
    hosts: HostPolicy,
    buckets: Option<Arc<dyn BucketAdmin>>,
}

impl Service {
    /// A service answering for `credentials`' accounts, on any `Host`.
    pub fn new(engine: Arc<Engine>, credentials: Credentials) -> Self {
        Self {
            engine,
            credentials,
            hosts: HostPolicy::Any,
            buckets: None,
        }
    }

    /// This service, answering S3 requests over `buckets` (without it, S3
    /// requests are `NotImplemented`).
    pub fn with_buckets(self, buckets: Arc<dyn BucketAdmin>) -> Self {
        Self {
            buckets: Some(buckets),
            ..self
        }
    }

    /// This service, answering only requests whose `Host` is `hosts`'.
    pub fn with_hosts(self, hosts: HostPolicy) -> Self {
        Self { hosts, ..self }
    }

    /// Answers a request the transport refused before it reached the service
    /// (a body too large or too slow, say) in EC2's error framing.
    pub fn refuse(&self, code: &'static str, message: &str) -> (HttpResponse, Outcome) {
        respond(Protocol::Ec2Query, |_| Err(ApiError::new(code, message)))
    }

    /// Answers one request.
    pub fn handle(&self, req: &HttpRequest, now: OffsetDateTime) -> (HttpResponse, Outcome) {
        let signed = SignedRequest {
            method: &req.method,
            path: &req.path,
            query: &req.query,
            headers: &req.headers,
            body: &req.body,
        };
        if signed_service(&signed).as_deref() == Some(s3::SERVICE) {
            return self.handle_s3(req, now);
        }
        if ebs::is_ebs_path(&req.path) {
            return self.handle_ebs(req, now);
        }
        respond(Protocol::Ec2Query, |outcome| self.answer(req, now, outcome))
    }

    /// Answers an S3 request (signed for `s3`, path-style).
    fn handle_s3(&self, req: &HttpRequest, now: OffsetDateTime) -> (HttpResponse, Outcome) {
        let mut outcome = Outcome::new();
        let action = s3::action_of(&req.method, &req.path, &req.query);
        outcome.action = action.map(str::to_owned);
        let answer = (|| {
            if self.hosts == HostPolicy::Loopback {
                check_loopback_host(req)?;
            }
            let signed = SignedRequest {
                method: &req.method,
                path: &req.path,
                query: &req.query,
                headers: &req.headers,
                body: &req.body,
            };
            let signer = verify_for(s3::SERVICE, &signed, |k| self.credentials.secret(k), now)?;
            let (account, permission) = self
                .credentials
                .account(&signer.access_key)
                .ok_or_else(|| ApiError::new("AuthFailure", "unknown access key"))?;
            outcome.account = Some(account.clone());
            let reads = action.is_some_and(is_read_only);
            if signer.presigned && !reads {
                return Err(ApiError::new(
                    "AuthFailure",
                    "query-string (presigned) signatures are accepted only for reads",
                )
                .into());
            }
            if action.is_some() {
                authorize(permission, action)?;
            }
            let request = s3::Request {
                method: &req.method,
                path: &req.path,
                query: &req.query,
                headers: &req.headers,
            };
            s3::answer(&self.engine, self.buckets.as_ref(), &account, &request)
        })();
        let response = match answer {
            Ok(mut response) => {
                response
                    .headers
                    .push(("x-amz-request-id".into(), outcome.request_id.clone()));
                response
            }
            Err(mut e) => {
                outcome.error = Some(e.code.into());
                if e.status >= 500 && e.status != 501 {
                    outcome.detail = Some(std::mem::replace(
                        &mut e.message,
                        format!(
                            "We encountered an internal error (request {})",
                            outcome.request_id
                        ),
                    ));
                }
                e.response(&outcome.request_id, req.method == "HEAD")
            }
        };
        (response, outcome)
    }

    /// Answers one of the EBS direct APIs (signed for `ebs`, rest-json).
    fn handle_ebs(&self, req: &HttpRequest, now: OffsetDateTime) -> (HttpResponse, Outcome) {
        let mut outcome = Outcome::new();
        let answer = (|| {
            if self.hosts == HostPolicy::Loopback {
                check_loopback_host(req)?;
            }
            let route = ebs::Route::parse(&req.method, &req.path)?;
            outcome.action = Some(route.action().to_owned());
            let signed = SignedRequest {
                method: &req.method,
                path: &req.path,
                query: &req.query,
                headers: &req.headers,
                body: &req.body,
            };
            let secret = |k: &str| self.credentials.secret(k);
            let signer = match route.body_checksummed() {
                true => verify_checksummed(ebs::SERVICE, &signed, secret, now)?,
                false => verify_for(ebs::SERVICE, &signed, secret, now)?,
            };
            let (account, permission) = self
                .credentials
                .account(&signer.access_key)
                .ok_or_else(|| ApiError::new("AuthFailure", "unknown access key"))?;
            outcome.account = Some(account.clone());
            if signer.presigned && !is_read_only(route.action()) {
                return Err(ApiError::new(
                    "AuthFailure",
                    "query-string (presigned) signatures are accepted only for reads",
                )
                .into());
            }
            authorize(permission, Some(route.action()))?;
            let request = ebs::Request {
                query: &req.query,
                headers: &req.headers,
                body: &req.body,
            };
            ebs::answer(&self.engine, &account, &route, &request, now)
        })();
        let mut response = match answer {
            Ok(response) => response,
            Err(mut e) => {
                outcome.error = Some(e.code.clone());
                if e.status >= 500 {
                    outcome.detail = Some(std::mem::replace(
                        &mut e.message,
                        format!(
                            "An internal error has occurred (request {})",
                            outcome.request_id
                        ),
                    ));
                }
                e.response()
            }
        };
        response
            .headers
            .push(("x-amzn-RequestId".into(), outcome.request_id.clone()));
        (response, outcome)
    }

    fn answer(
        &self,
        req: &HttpRequest,
        now: OffsetDateTime,
        outcome: &mut Outcome,
    ) -> Result<(String, Body), ApiError> {
        if self.hosts == HostPolicy::Loopback {
            check_loopback_host(req)?;
        }
        let mut params = request_params(req)?;
        outcome.action = params.peek("Action");
        let signed = SignedRequest {
            method: &req.method,
            path: &req.path,
            query: &req.query,
            headers: &req.headers,
            body: &req.body,
        };
        let signer = verify(&signed, |k| self.credentials.secret(k), now)?;
        let (account, permission) = self
            .credentials
            .account(&signer.access_key)
            .ok_or_else(|| ApiError::new("AuthFailure", "unknown access key"))?;
        outcome.account = Some(account.clone());
        if signer.presigned && !outcome.action.as_deref().is_some_and(is_read_only) {
            // A presigned URL is a link: a page can make a browser follow it
            // (no preflight for a simple GET). Links may only read.
            return Err(ApiError::new(
                "AuthFailure",
                format!(
                    "query-string (presigned) signatures are accepted only for Describe actions; sign {} in the Authorization header",
                    outcome.action.as_deref().unwrap_or("the request")
                ),
            ));
        }
        authorize(permission, outcome.action.as_deref())?;
        params.drop_auth();
        actions::handle(&self.engine, &account, params)
    }
}

/// Whether `action` only reads.
fn is_read_only(action: &str) -> bool {
    action.starts_with("Describe")
        || matches!(
            action,
            "ListSnapshotBlocks"
                | "ListChangedBlocks"
                | "GetSnapshotBlock"
                | "ListBuckets"
                | "HeadBucket"
                | "ListObjects"
                | "ListObjectsV2"
                | "HeadObject"
                | "GetObject"
        )
}

/// Refuses a request whose `Host` is not a loopback name.
fn check_loopback_host(req: &HttpRequest) -> Result<(), ApiError> {
    let host = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim());
    if host.is_some_and(is_loopback_host) {
        return Ok(());
    }
    Err(ApiError::new(
        "AuthFailure",
        format!(
            "Host {:?} is not a loopback name; a server with the default credentials answers only localhost, 127.0.0.0/8 and [::1]",
            host.unwrap_or("")
        ),
    ))
}

/// `localhost`, an address in 127.0.0.0/8 or `[::1]`, with an optional port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((name, port)) if port.is_empty() || valid_port(port) => name,
            _ => return false,
        },
        None => match host.split_once(':') {
            Some((name, port)) if valid_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn valid_port(port: &str) -> bool {
    port.strip_prefix(':')
        .unwrap_or(port)
        .parse::<u16>()
        .is_ok()
}

/// Answers a request whose caller a front door has already authenticated as
/// `account` (API Gateway's IAM authorization, on AWS): no signature is
/// checked here, and `permission` is what the front door's route allows.
pub fn handle_authenticated(
    engine: &Engine,
    req: &HttpRequest,
    account: &AccountId,
    permission: Permission,
) -> (HttpResponse, Outcome) {
    let protocol = Protocol::of(req);
    respond(protocol, |outcome| {
        let mut params = match protocol {
            Protocol::Ec2Query => request_params(req)?,
            // The action is the route's (`POST /<Action>`).
            Protocol::RestJson => {
                let action = req.path.rsplit('/').next().unwrap_or_default();
                crate::json::params(action, &req.body)?
            }
        };
        outcome.action = params.peek("Action");
        outcome.account = Some(account.clone());
        authorize(permission, outcome.action.as_deref())?;
        params.drop_auth();
        actions::handle(engine, account, params)
    })
}

/// Runs `answer` under a fresh request id and turns its result into a
/// response in `protocol`'s framing.
fn respond(
    protocol: Protocol,
    answer: impl FnOnce(&mut Outcome) -> Result<(String, Body), ApiError>,
) -> (HttpResponse, Outcome) {
    let mut outcome = Outcome::new();
    let request_id = outcome.request_id.clone();
    let response = match (answer(&mut outcome), protocol) {
        (Ok((action, body)), Protocol::Ec2Query) => {
            HttpResponse::text(200, XML, body.document(&action, &request_id))
        }
        (Ok((_, body)), Protocol::RestJson) => {
            HttpResponse::text(200, JSON, body.json(&request_id))
        }
        (Err(mut e), protocol) => {
            outcome.error = Some(e.code.clone());
            if e.status >= 500 {
                // The detail (a local path, a dependency's words) is the
                // operator's; the caller gets what to quote to them.
                let generic = match e.code.as_ref() {
                    "InternalError" => "An internal error has occurred",
                    _ => "The service is unavailable; try again shortly",
                };
                outcome.detail = Some(std::mem::replace(
                    &mut e.message,
                    format!("{generic} (request {request_id})"),
                ));
            }
            let (content_type, body) = match protocol {
                Protocol::Ec2Query => (XML, error_document(&e, &request_id)),
                Protocol::RestJson => (JSON, json_error_document(&e, &request_id)),
            };
            HttpResponse::text(e.status, content_type, body)
        }
    };
    (response, outcome)
}

/// The request's parameters: the form body of a POST, the query of a GET.
fn request_params(req: &HttpRequest) -> Result<Params, ApiError> {
    if req.body.len() > MAX_REQUEST_BYTES || req.query.len() > MAX_REQUEST_BYTES {
        return Err(ApiError {
            code: "RequestEntityTooLarge".into(),
            message: format!("requests are limited to {MAX_REQUEST_BYTES} bytes"),
            status: 413,
        });
    }
    match req.method.as_str() {
        "POST" => Params::parse(&req.body),
        "GET" => Params::parse(req.query.as_bytes()),
        other => Err(ApiError::new(
            "UnsupportedProtocol",
            format!("method {other} is not supported; use POST or GET"),
        )),
    }
}

/// Read-only callers may only describe.
fn authorize(permission: Permission, action: Option<&str>) -> Result<(), ApiError> {
    let allowed = match permission {
        Permission::Full => true,
        Permission::ReadOnly => action.is_some_and(is_read_only),
        Permission::Only(actions) => action.is_some_and(|a| actions.contains(&a)),
    };
    if !allowed {
        return Err(ApiError::new(
            "UnauthorizedOperation",
            "You are not authorized to perform this operation.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_parse_strictly() {
        let c = Credentials::parse(
            "# keys\nAKIA1 s1 111122223333\n\nAKIA2 s2 444455556666 read-only\n",
        )
        .unwrap();
        assert_eq!(c.secret("AKIA2").as_deref(), Some("s2"));
        let (account, permission) = c.account("AKIA1").unwrap();
        assert_eq!(
            (account.as_str(), permission),
            ("111122223333", Permission::Full)
        );
        assert_eq!(c.account("AKIA2").unwrap().1, Permission::ReadOnly);
        for bad in [
            "",
            "# none",
            "k s",
            "k s 123",
            "k s 111122223333 admin",
            "k s 111122223333\nk t 111122223333",
        ] {
            assert!(Credentials::parse(bad).is_err(), "{bad:?}");
        }
    }
}
