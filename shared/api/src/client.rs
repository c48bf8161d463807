//! The client side of the protocol, for the `amistore` task commands' remote
//! mode: form-encoding a request, signing it with SigV4 the way the SDKs do,
//! sending it over HTTP/1.1, and reading the answer's elements.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::format_description;

use crate::ApiError;
use crate::sigv4::{ALGORITHM, SERVICE, SignedRequest, canonical_request, sha256_hex, signature};

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

/// Percent-encodes a form component (RFC 3986 unreserved characters stay).
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An endpoint `http://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/]`. HTTPS needs a TLS client this binary does
    /// not carry; the stock AWS CLI talks to HTTPS endpoints.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "endpoint {url:?} must start with http:// (use the AWS CLI for https endpoints)"
            )
        })?;
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(format!("endpoint {url:?} must be http://HOST[:PORT]"));
        }
        Ok(Self {
            host: host.to_owned(),
        })
    }
}

/// Sends `Action=…` with `params` (already flattened: `ImageId.1`, …) and
/// returns the response document, or the error it carries.
pub fn call(
    endpoint: &Endpoint,
    credentials: &ClientCredentials,
    region: &str,
    action: &str,
    params: &[(String, String)],
) -> Result<String, ApiError> {
    let (headers, body) = signed_form(
        &endpoint.host,
        credentials,
        region,
        action,
        params,
        OffsetDateTime::now_utc(),
    )?;
    let (status, text) = post(&endpoint.host, &headers, body.as_bytes()).map_err(|e| {
        ApiError::new(
            "Unavailable",
            format!("cannot reach {}: {e}", endpoint.host),
        )
    })?;
    if status == 200 {
        return Ok(text);
    }
    let code = crate::xml::text_of(&text, "Code").unwrap_or_else(|| format!("HTTP{status}"));
    let message = crate::xml::text_of(&text, "Message").unwrap_or_else(|| text.clone());
    // The code is a borrowed 'static in ApiError; an unknown one reads as a
    // generic failure with the server's code in the message.
    Err(ApiError {
        code: known_code(&code),
        message: format!("{code}: {message}"),
        status,
    })
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
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn amz_date(now: OffsetDateTime) -> Result<String, ApiError> {
    now.format(format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .map_err(|e| ApiError::new("InternalError", e.to_string()))
}

fn known_code(code: &str) -> &'static str {
    const CODES: [&str; 16] = [
        "DryRunOperation",
        "AuthFailure",
        "RequestExpired",
        "MissingAction",
        "MissingParameter",
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "InvalidAMIID.Malformed",
        "InvalidAMIID.NotFound",
        "InvalidAMIName.Malformed",
        "InvalidAMIName.Duplicate",
        "InvalidNextToken",
        "ResourceLimitExceeded",
        "IncorrectState",
        "InvalidAction",
        "UnknownParameter",
    ];
    CODES
        .into_iter()
        .find(|c| *c == code)
        .unwrap_or("ServerError")
}

/// One HTTP/1.1 POST with `Connection: close`; returns the status and body.
fn post(host: &str, headers: &[(String, String)], body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut request = String::from("POST / HTTP/1.1\r\n");
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.take(16 << 20).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("the response has no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("the response has no status"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}
