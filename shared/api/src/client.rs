//! The client side of the protocols, for the `amistore` commands' remote
//! mode: form-encoding an EC2 request, signing any request with SigV4 the way
//! the SDKs do (EC2, EBS, S3), and, with the `client` feature, sending it with
//! `ureq` (HTTP/1.1, rustls for `https://`) and reading the answer.

use time::OffsetDateTime;
use time::macros::format_description;

use crate::ApiError;
use crate::sigv4::{
    ALGORITHM, SERVICE, SignedRequest, canonical_request, canonical_request_for, sha256_hex,
    signature, uri_encode,
};

/// Credentials to sign with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret: String,
    /// Session token, for temporary credentials.
    pub session_token: Option<String>,
}

/// An endpoint `http[s]://host[:port]`, and (with the `client` feature) the
/// HTTP agent that reaches it, which keeps its connections open between calls.
#[derive(Clone)]
pub struct Endpoint {
    /// `http` or `https`.
    scheme: &'static str,
    /// `host[:port]`, as the Host header (and the signature) carry it.
    host: String,
    #[cfg(feature = "client")]
    agent: ureq::Agent,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)
    }
}

/// The largest CA bundle read: Mozilla's whole bundle is about 220 KB.
pub const MAX_CA_BUNDLE_BYTES: usize = 4 << 20;

#[cfg(feature = "client")]
fn agent(roots: ureq::tls::RootCerts) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(300)))
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build()
        .into()
}

impl Endpoint {
    /// Parses `http[s]://host[:port][/]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => ("http", rest),
            (_, Some(rest)) => ("https", rest),
            _ => {
                return Err(format!(
                    "endpoint {url:?} must start with http:// or https://"
                ));
            }
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(format!("endpoint {url:?} must be {scheme}://HOST[:PORT]"));
        }
        Ok(Self {
            scheme,
            host: host.to_owned(),
            // Mozilla's roots, as the AWS SDKs trust by default.
            #[cfg(feature = "client")]
            agent: agent(ureq::tls::RootCerts::WebPki),
        })
    }

    /// The same endpoint, trusting only the certificates in `pem` (a CA
    /// bundle, as `AWS_CA_BUNDLE` names one for the AWS CLI and SDKs): for a
    /// server whose certificate a private or self-signed authority issued.
    #[cfg(feature = "client")]
    pub fn trusting_only(self, pem: &[u8]) -> Result<Self, String> {
        use ureq::tls::{PemItem, parse_pem};
        if pem.len() > MAX_CA_BUNDLE_BYTES {
            return Err(format!(
                "the CA bundle is {} bytes; at most {MAX_CA_BUNDLE_BYTES} are read",
                pem.len()
            ));
        }
        let mut roots = Vec::new();
        for item in parse_pem(pem) {
            match item {
                Ok(PemItem::Certificate(cert)) => roots.push(cert),
                Ok(_) => {}
                Err(e) => return Err(format!("the CA bundle is not PEM: {e}")),
            }
        }
        if roots.is_empty() {
            return Err("the CA bundle holds no certificate (PEM `BEGIN CERTIFICATE`)".into());
        }
        Ok(Self {
            agent: agent(ureq::tls::RootCerts::new_with_certs(&roots)),
            ..self
        })
    }

    /// `host[:port]`.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// A request to sign and send: one of the server's APIs' (`service` is
/// `ec2`, `ebs` or `s3`).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The service the request is signed for.
    pub service: &'a str,
    /// Method.
    pub method: &'a str,
    /// Path, percent-encoded.
    pub path: &'a str,
    /// Query, encoded, without `?`.
    pub query: &'a str,
    /// Headers besides the ones signing adds.
    pub headers: &'a [(String, String)],
    /// Body.
    pub body: &'a [u8],
}

/// `request`'s headers with what SigV4 adds for `host` at `now`: `host`,
/// `x-amz-date`, `x-amz-content-sha256` (S3 wants it), the session token, and
/// `authorization`, which signs them all.
pub fn sign(
    host: &str,
    credentials: &ClientCredentials,
    region: &str,
    request: &Outgoing<'_>,
    now: OffsetDateTime,
) -> Result<Vec<(String, String)>, ApiError> {
    let amz_date = amz_date(now)?;
    let payload = sha256_hex(request.body);
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    headers.push(("host".to_owned(), host.to_owned()));
    headers.push(("x-amz-date".to_owned(), amz_date.clone()));
    headers.push(("x-amz-content-sha256".to_owned(), payload.clone()));
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token".to_owned(), token.clone()));
    }
    headers.sort();
    let names: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
    let req = SignedRequest {
        method: request.method,
        path: request.path,
        query: request.query,
        headers: &headers,
        body: request.body,
    };
    let canonical = canonical_request_for(&req, &names, None, request.service == "s3")?;
    let date = &amz_date[..8];
    let service = request.service;
    let sig = signature(
        &credentials.secret,
        date,
        region,
        service,
        &amz_date,
        &format!("{canonical}\n{payload}"),
    );
    headers.push((
        "authorization".to_owned(),
        format!(
            "{ALGORITHM} Credential={}/{date}/{region}/{service}/aws4_request, SignedHeaders={}, Signature={sig}",
            credentials.access_key,
            names.join(";")
        ),
    ));
    Ok(headers)
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Answer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The largest answer read (an S3 GET is at most 16 MiB here).
#[cfg(feature = "client")]
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// Signs and sends `request` to `endpoint`; any HTTP status is an answer,
/// only a failure to reach the server or read its answer is an error.
#[cfg(feature = "client")]
pub fn send(
    endpoint: &Endpoint,
    credentials: &ClientCredentials,
    region: &str,
    request: &Outgoing<'_>,
) -> Result<Answer, ApiError> {
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::new(
            "Unavailable",
            format!("cannot reach {}://{}: {e}", endpoint.scheme, endpoint.host),
        )
    };
    let headers = sign(
        &endpoint.host,
        credentials,
        region,
        request,
        OffsetDateTime::now_utc(),
    )?;
    let mut uri = format!("{}://{}{}", endpoint.scheme, endpoint.host, request.path);
    if !request.query.is_empty() {
        uri.push('?');
        uri.push_str(request.query);
    }
    let mut builder = ureq::http::Request::builder()
        .method(request.method)
        .uri(&uri);
    for (k, v) in &headers {
        builder = builder.header(k, v);
    }
    let http = builder.body(request.body.to_vec()).map_err(|e| {
        ApiError::new(
            "InvalidParameterValue",
            format!("bad request to {uri}: {e}"),
        )
    })?;
    let response = endpoint.agent.run(http).map_err(|e| unreachable(&e))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match request.method {
        "HEAD" => Vec::new(),
        _ => response
            .into_body()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(|e| unreachable(&e))?,
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Sends `Action=…` with `params` (already flattened: `ImageId.1`, …) and
/// returns the response document, or the error it carries.
#[cfg(feature = "client")]
pub fn call(
    endpoint: &Endpoint,
    credentials: &ClientCredentials,
    region: &str,
    action: &str,
    params: &[(String, String)],
) -> Result<String, ApiError> {
    let body = form(action, params);
    let headers = [(
        "content-type".to_owned(),
        "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
    )];
    let answer = send(
        endpoint,
        credentials,
        region,
        &Outgoing {
            service: SERVICE,
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: body.as_bytes(),
        },
    )?;
    let text = answer.text();
    if answer.status == 200 {
        return Ok(text);
    }
    let status = answer.status;
    let code = crate::xml::text_of(&text, "Code").unwrap_or_else(|| format!("HTTP{status}"));
    let message = crate::xml::text_of(&text, "Message").unwrap_or_else(|| text.clone());
    // The server's code is kept as it sent it, one this client knows or not.
    Err(ApiError::answered(code, message, status))
}

/// The form body of `Action=…` with `params`, and the headers that sign it
/// with SigV4 for `host` at `now`, the way the SDKs sign EC2 requests.
pub fn signed_form(
    host: &str,
    credentials: &ClientCredentials,
    region: &str,
    action: &str,
    params: &[(String, String)],
    now: OffsetDateTime,
) -> Result<(Vec<(String, String)>, String), ApiError> {
    let body = form(action, params);
    let amz_date = amz_date(now)?;
    let mut headers = vec![
        (
            "content-type".to_owned(),
            "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
        ),
        ("host".to_owned(), host.to_owned()),
        ("x-amz-date".to_owned(), amz_date.clone()),
    ];
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token".to_owned(), token.clone()));
    }
    let names: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
    let req = SignedRequest {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body: body.as_bytes(),
    };
    let canonical = canonical_request(&req, &names, None)?;
    let date = &amz_date[..8];
    let sig = signature(
        &credentials.secret,
        date,
        region,
        SERVICE,
        &amz_date,
        &format!("{canonical}\n{}", sha256_hex(body.as_bytes())),
    );
    headers.push((
        "authorization".to_owned(),
        format!(
            "{ALGORITHM} Credential={}/{date}/{region}/{SERVICE}/aws4_request, SignedHeaders={}, Signature={sig}",
            credentials.access_key,
            names.join(";")
        ),
    ));
    Ok((headers, body))
}

/// The query string of a presigned `GET /?Action=…` for `host`, valid for
/// `expires_seconds` from `now`: what a web page can make a browser send.
pub fn presigned_query(
    host: &str,
    credentials: &ClientCredentials,
    region: &str,
    action: &str,
    params: &[(String, String)],
    now: OffsetDateTime,
    expires_seconds: u32,
) -> Result<String, ApiError> {
    let amz_date = amz_date(now)?;
    let date = &amz_date[..8];
    let credential = format!(
        "{}/{date}/{region}/{SERVICE}/aws4_request",
        credentials.access_key
    );
    let mut auth = vec![
        ("X-Amz-Algorithm".to_owned(), ALGORITHM.to_owned()),
        ("X-Amz-Credential".to_owned(), credential),
        ("X-Amz-Date".to_owned(), amz_date.clone()),
        ("X-Amz-Expires".to_owned(), expires_seconds.to_string()),
        ("X-Amz-SignedHeaders".to_owned(), "host".to_owned()),
    ];
    auth.extend(params.iter().cloned());
    let query = format!("{}&{}", form(action, &[]), encode_pairs(&auth));
    let headers = vec![("host".to_owned(), host.to_owned())];
    let req = SignedRequest {
        method: "GET",
        path: "/",
        query: &query,
        headers: &headers,
        body: b"",
    };
    let canonical = canonical_request(&req, &["host".to_owned()], None)?;
    let sig = signature(
        &credentials.secret,
        date,
        region,
        SERVICE,
        &amz_date,
        &format!("{canonical}\n{}", sha256_hex(b"")),
    );
    Ok(format!("{query}&X-Amz-Signature={sig}"))
}

fn form(action: &str, params: &[(String, String)]) -> String {
    let mut pairs = vec![
        ("Action".to_owned(), action.to_owned()),
        ("Version".to_owned(), "2016-11-15".to_owned()),
    ];
    pairs.extend(params.iter().cloned());
    encode_pairs(&pairs)
}

fn encode_pairs(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&")
}

fn amz_date(now: OffsetDateTime) -> Result<String, ApiError> {
    now.format(format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .map_err(|e| ApiError::new("InternalError", e.to_string()))
}

#[cfg(all(test, feature = "client"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{Read, Write};

    use super::*;

    /// One connection on a loopback port, answered with `status` and `body`.
    fn answer_once(status: u16, body: String) -> Endpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The whole request: its head, then the Content-Length body.
            while let Ok(n) = conn.read(&mut buf) {
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if rest.len() >= len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.1 {status} Answer\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        });
        Endpoint::parse(&url).unwrap()
    }

    fn credentials() -> ClientCredentials {
        ClientCredentials {
            access_key: "test".into(),
            secret: "test".into(),
            session_token: None,
        }
    }

    /// EC2's error document with `code` and `message` (already escaped).
    fn error_document(code: &str, message: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?><Response><Errors><Error><Code>{code}</Code>\
             <Message>{message}</Message></Error></Errors><RequestID>r-1</RequestID></Response>"
        )
    }

    #[test]
    fn a_server_s_error_code_is_kept_whether_or_not_the_client_knows_it() {
        for (code, message, read) in [
            (
                "InvalidAMIID.NotFound",
                "The image id &apos;ami-1&apos; does not exist",
                "The image id 'ami-1' does not exist",
            ),
            ("SomeCodeAddedNextYear", "something new", "something new"),
        ] {
            let endpoint = answer_once(400, error_document(code, message));
            let err = call(
                &endpoint,
                &credentials(),
                "us-east-1",
                "DescribeImages",
                &[],
            )
            .unwrap_err();
            assert_eq!(
                (err.code.as_ref(), err.message.as_str(), err.status),
                (code, read, 400)
            );
        }
    }
}
