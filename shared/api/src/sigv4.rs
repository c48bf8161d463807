//! Verifying AWS Signature Version 4 on EC2 requests, in both forms clients
//! use: the `Authorization` header, and the query string (`X-Amz-Signature`…).
//!
//! The server recomputes the signature from the request and the secret of the
//! access key named in the credential scope, and compares. Requests must be
//! for the `ec2` service and dated within 15 minutes of the server's clock (as
//! EC2 allows); a query-signed request must also not have expired.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::ApiError;

/// The only algorithm SigV4 defines.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The service name clients sign EC2 requests for.
pub const SERVICE: &str = "ec2";
/// Largest difference between a request's date and the server's clock.
pub const MAX_SKEW_SECONDS: i64 = 15 * 60;
/// A query-signed request is valid at most this long (seven days, as SigV4).
pub const MAX_EXPIRES_SECONDS: i64 = 7 * 24 * 60 * 60;

/// The parts of an HTTP request a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path as it came on the wire (still percent-encoded).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    /// Header names and values as received.
    pub headers: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
}

/// Who signed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The access key id.
    pub access_key: String,
    /// The region the client signed for.
    pub region: String,
    /// Whether the signature came in the query string (a presigned URL, which
    /// any web page can make a browser send) rather than the Authorization
    /// header.
    pub presigned: bool,
}

fn auth_failure(msg: impl Into<String>) -> ApiError {
    ApiError::new("AuthFailure", msg)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters stay, the rest
/// become `%XX` (and `/` stays when `keep_slash`). The client's forms and
/// paths and S3's `encoding-type=url` use it too.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Percent-decodes a query component (`+` is a space in forms).
fn uri_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let h = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match (uri_decode(k), uri_decode(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(ApiError::new(
                    "MalformedQueryString",
                    "bad percent-encoding in the query string",
                )),
            }
        })
        .collect()
}

/// The canonical request, without its last line (the payload hash).
pub(crate) fn canonical_request(
    req: &SignedRequest,
    signed_headers: &[String],
    skip_query: Option<&str>,
) -> Result<String, ApiError> {
    canonical_request_for(req, signed_headers, skip_query, false)
}

/// [`canonical_request`]; `s3` takes the path as sent (S3 signs it encoded
/// once, every other service encodes the encoded path again).
pub(crate) fn canonical_request_for(
    req: &SignedRequest,
    signed_headers: &[String],
    skip_query: Option<&str>,
    s3: bool,
) -> Result<String, ApiError> {
    let mut pairs: Vec<(String, String)> = query_pairs(req.query)?
        .into_iter()
        .filter(|(k, _)| Some(k.as_str()) != skip_query)
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(auth_failure(format!(
                "signed header {name} is not in the request"
            )));
        }
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let path = if req.path.is_empty() { "/" } else { req.path };
    let path = match s3 {
        true => path.to_owned(),
        false => uri_encode(path, true),
    };
    Ok(format!(
        "{}\n{path}\n{query}\n{headers}\n{}",
        req.method,
        signed_headers.join(";")
    ))
}

/// The signature of `canonical` (ending with the payload hash) under `secret`.
pub fn signature(
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
    amz_date: &str,
    canonical: &str,
) -> String {
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date);
    let k_region = hmac(&k_date, region);
    let k_service = hmac(&k_region, service);
    let k_signing = hmac(&k_service, "aws4_request");
    hex(&hmac(&k_signing, &to_sign))
}

fn header<'a>(req: &'a SignedRequest, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn parse_amz_date(s: &str) -> Result<OffsetDateTime, ApiError> {
    let format = format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, format)
        .map(|t| t.assume_utc())
        .map_err(|_| {
            auth_failure(format!(
                "X-Amz-Date {s:?} is not of the form 20150830T123600Z"
            ))
        })
}

/// The pieces of a signature, from the header or the query.
struct Claim {
    access_key: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    expires: Option<i64>,
    in_query: bool,
}

fn parse_credential(credential: &str) -> Result<(String, String, String, String), ApiError> {
    let parts: Vec<&str> = credential.split('/').collect();
    match parts.as_slice() {
        [key, date, region, service, "aws4_request"] if !key.is_empty() => Ok((
            key.to_string(),
            date.to_string(),
            region.to_string(),
            service.to_string(),
        )),
        _ => Err(auth_failure(format!(
            "credential {credential:?} is not KEY/DATE/REGION/SERVICE/aws4_request"
        ))),
    }
}

fn claim(req: &SignedRequest) -> Result<Claim, ApiError> {
    if let Some(auth) = header(req, "authorization") {
        let rest = auth
            .strip_prefix(ALGORITHM)
            .ok_or_else(|| auth_failure("only AWS4-HMAC-SHA256 signatures are accepted"))?;
        let mut fields = std::collections::BTreeMap::new();
        for part in rest.split(',') {
            if let Some((k, v)) = part.trim().split_once('=') {
                fields.insert(k.trim(), v.trim());
            }
        }
        let get = |k: &str| {
            fields
                .get(k)
                .copied()
                .ok_or_else(|| auth_failure(format!("the Authorization header has no {k}")))
        };
        let (access_key, date, region, service) = parse_credential(get("Credential")?)?;
        let amz_date = header(req, "x-amz-date")
            .ok_or_else(|| auth_failure("the request has no X-Amz-Date header"))?
            .to_owned();
        return Ok(Claim {
            access_key,
            date,
            region,
            service,
            signed_headers: get("SignedHeaders")?
                .split(';')
                .map(str::to_owned)
                .collect(),
            signature: get("Signature")?.to_owned(),
            amz_date,
            expires: None,
            in_query: false,
        });
    }
    let pairs = query_pairs(req.query)?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(signature) = get("X-Amz-Signature") else {
        return Err(auth_failure(
            "the request is not signed (no Authorization header or X-Amz-Signature)",
        ));
    };
    if get("X-Amz-Algorithm").as_deref() != Some(ALGORITHM) {
        return Err(auth_failure(
            "only AWS4-HMAC-SHA256 signatures are accepted",
        ));
    }
    let credential =
        get("X-Amz-Credential").ok_or_else(|| auth_failure("the query has no X-Amz-Credential"))?;
    let (access_key, date, region, service) = parse_credential(&credential)?;
    let expires = get("X-Amz-Expires")
        .map(|e| {
            e.parse::<i64>()
                .ok()
                .filter(|e| (0..=MAX_EXPIRES_SECONDS).contains(e))
                .ok_or_else(|| {
                    auth_failure(format!(
                        "X-Amz-Expires {e:?} is not 0 to {MAX_EXPIRES_SECONDS} seconds"
                    ))
                })
        })
        .transpose()?;
    Ok(Claim {
        access_key,
        date,
        region,
        service,
        signed_headers: get("X-Amz-SignedHeaders")
            .ok_or_else(|| auth_failure("the query has no X-Amz-SignedHeaders"))?
            .split(';')
            .map(str::to_owned)
            .collect(),
        signature,
        amz_date: get("X-Amz-Date").ok_or_else(|| auth_failure("the query has no X-Amz-Date"))?,
        expires,
        in_query: true,
    })
}

/// The service `req` says it is signed for (its credential scope's), if it
/// is signed at all: which API the request is for, before it is verified.
pub fn signed_service(req: &SignedRequest) -> Option<String> {
    claim(req).ok().map(|c| c.service)
}

/// Verifies `req`'s signature for EC2 ([`SERVICE`]). `secret_of` gives the
/// secret of an access key (or `None` for an unknown key); `now` is the
/// server's clock.
pub fn verify(
    req: &SignedRequest,
    secret_of: impl Fn(&str) -> Option<String>,
    now: OffsetDateTime,
) -> Result<Signer, ApiError> {
    verify_for(SERVICE, req, secret_of, now)
}

/// [`verify`], for requests signed for `service` (`execute-api` behind API
/// Gateway's IAM authorization).
pub fn verify_for(
    service: &str,
    req: &SignedRequest,
    secret_of: impl Fn(&str) -> Option<String>,
    now: OffsetDateTime,
) -> Result<Signer, ApiError> {
    verify_checked(service, req, secret_of, now, false)
}

/// [`verify_for`], for a request whose body a checksum header covers, which
/// the action checks (EBS's PutSnapshotBlock): its body may be sent unsigned
/// (`UNSIGNED-PAYLOAD`), as EBS allows.
pub fn verify_checksummed(
    service: &str,
    req: &SignedRequest,
    secret_of: impl Fn(&str) -> Option<String>,
    now: OffsetDateTime,
) -> Result<Signer, ApiError> {
    verify_checked(service, req, secret_of, now, true)
}

fn verify_checked(
    service: &str,
    req: &SignedRequest,
    secret_of: impl Fn(&str) -> Option<String>,
    now: OffsetDateTime,
    body_checksummed: bool,
) -> Result<Signer, ApiError> {
    let c = claim(req)?;
    if c.service != service {
        return Err(auth_failure(format!(
            "the request is signed for service {:?}, not {service}",
            c.service
        )));
    }
    let signed_at = parse_amz_date(&c.amz_date)?;
    if !c.amz_date.starts_with(&c.date) {
        return Err(auth_failure(
            "the credential scope's date is not the request's date",
        ));
    }
    let age = (now - signed_at).whole_seconds();
    let too_old = match c.expires {
        Some(expires) => age > expires || age < -MAX_SKEW_SECONDS,
        None => age.abs() > MAX_SKEW_SECONDS,
    };
    if too_old {
        return Err(ApiError::new(
            "RequestExpired",
            format!("Request has expired: signed at {}, now {}", c.amz_date, now),
        ));
    }
    let mut names: Vec<String> = c
        .signed_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    names.sort();
    if !names.iter().any(|h| h == "host") {
        return Err(auth_failure("the signature must cover the host header"));
    }
    let secret = secret_of(&c.access_key).ok_or_else(|| {
        auth_failure("AWS was not able to validate the provided access credentials")
    })?;
    let skip = c.in_query.then_some("X-Amz-Signature");
    let canonical = canonical_request_for(req, &names, skip, c.service == "s3")?;
    let body_hash = sha256_hex(req.body);
    // EC2 signs the body's hash: a signature over UNSIGNED-PAYLOAD would let
    // whoever holds a signed request change its body. A presigned URL with no
    // body may use it (S3-style presigners do), since nothing is unsigned.
    // A checksummed body may go unsigned only if the checksum is signed:
    // otherwise whoever holds the request could swap body and checksum.
    let checksum_signed = body_checksummed && names.iter().any(|h| h == "x-amz-checksum");
    let unsigned_allowed = (c.in_query && req.body.is_empty()) || checksum_signed;
    let payloads: Vec<String> = match header(req, "x-amz-content-sha256") {
        Some("UNSIGNED-PAYLOAD") if !unsigned_allowed => {
            return Err(auth_failure(
                "UNSIGNED-PAYLOAD is not accepted: sign the body's SHA-256",
            ));
        }
        Some(claimed) if claimed != "UNSIGNED-PAYLOAD" && claimed != body_hash => {
            return Err(auth_failure("x-amz-content-sha256 does not match the body"));
        }
        Some(claimed) => vec![claimed.to_owned()],
        None if unsigned_allowed => vec![body_hash, "UNSIGNED-PAYLOAD".to_owned()],
        None => vec![body_hash],
    };
    let expected = c.signature.to_ascii_lowercase();
    let matched = payloads.iter().any(|payload| {
        let sig = signature(
            &secret,
            &c.date,
            &c.region,
            &c.service,
            &c.amz_date,
            &format!("{canonical}\n{payload}"),
        );
        // Compared through their hashes, so timing tells nothing about the right one.
        Sha256::digest(sig.as_bytes()) == Sha256::digest(expected.as_bytes())
    });
    if !matched {
        return Err(auth_failure(
            "The request signature we calculated does not match the signature you provided",
        ));
    }
    Ok(Signer {
        access_key: c.access_key,
        region: c.region,
        presigned: c.in_query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn at(s: &str) -> OffsetDateTime {
        parse_amz_date(s).unwrap()
    }

    /// AWS's SigV4 test suite, get-vanilla and get-vanilla-query-order-key-case
    /// (service "service"; checked here through the canonical pieces).
    #[test]
    fn matches_the_aws_test_suite() {
        let headers = h(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ]);
        for (query, expected) in [
            (
                "",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "Param2=value2&Param1=value1",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
        ] {
            let req = SignedRequest {
                method: "GET",
                path: "/",
                query,
                headers: &headers,
                body: b"",
            };
            let canonical =
                canonical_request(&req, &["host".into(), "x-amz-date".into()], None).unwrap();
            let sig = signature(
                SECRET,
                "20150830",
                "us-east-1",
                "service",
                "20150830T123600Z",
                &format!("{canonical}\n{}", sha256_hex(b"")),
            );
            assert_eq!(sig, expected, "{query}");
        }
    }

    fn signed_post(secret: &str, body: &[u8], amz_date: &str) -> Vec<(String, String)> {
        let mut headers = h(&[
            ("Host", "127.0.0.1:9000"),
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("X-Amz-Date", amz_date),
        ]);
        let names = vec![
            "content-type".to_owned(),
            "host".to_owned(),
            "x-amz-date".to_owned(),
        ];
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        let canonical = canonical_request(&req, &names, None).unwrap();
        let sig = signature(
            secret,
            &amz_date[..8],
            "us-east-1",
            "ec2",
            amz_date,
            &format!("{canonical}\n{}", sha256_hex(body)),
        );
        headers.push((
            "Authorization".into(),
            format!("{ALGORITHM} Credential=AKID/{}/us-east-1/ec2/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={sig}", &amz_date[..8]),
        ));
        headers
    }

    #[test]
    fn good_signatures_pass_and_everything_else_is_refused() {
        let body = b"Action=DescribeStoreImageTasks&Version=2016-11-15";
        let secrets = |k: &str| (k == "AKID").then(|| "s3cret".to_owned());
        let now = at("20261128T120000Z");
        let headers = signed_post("s3cret", body, "20261128T120000Z");
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        let signer = verify(&req, secrets, now).unwrap();
        assert_eq!(
            signer,
            Signer {
                access_key: "AKID".into(),
                region: "us-east-1".into(),
                presigned: false,
            }
        );

        let wrong_secret = signed_post("not-it", body, "20261128T120000Z");
        let tampered_body = b"Action=DescribeStoreImageTasks&Version=2016-11-15&x=1";
        let cases: Vec<(SignedRequest, OffsetDateTime, &str)> = vec![
            (
                SignedRequest {
                    headers: &wrong_secret,
                    ..req
                },
                now,
                "AuthFailure",
            ),
            (
                SignedRequest {
                    body: tampered_body,
                    ..req
                },
                now,
                "AuthFailure",
            ),
            (
                SignedRequest {
                    method: "GET",
                    ..req
                },
                now,
                "AuthFailure",
            ),
            (req, at("20261128T121600Z"), "RequestExpired"),
            (req, at("20261128T114400Z"), "RequestExpired"),
            (
                SignedRequest {
                    headers: &[],
                    ..req
                },
                now,
                "AuthFailure",
            ),
        ];
        for (r, when, code) in cases {
            assert_eq!(verify(&r, secrets, when).unwrap_err().code, code);
        }
        assert_eq!(verify(&req, |_| None, now).unwrap_err().code, "AuthFailure");
        // 14 minutes of skew is within EC2's allowance.
        assert!(verify(&req, secrets, at("20261128T121400Z")).is_ok());
    }

    #[test]
    fn query_string_signatures_verify() {
        let amz_date = "20261128T120000Z";
        let base = format!(
            "Action=DescribeStoreImageTasks&Version=2016-11-15&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKID%2F20261128%2Fus-east-1%2Fec2%2Faws4_request&X-Amz-Date={amz_date}\
             &X-Amz-Expires=300&X-Amz-SignedHeaders=host"
        );
        let headers = h(&[("Host", "localhost:9000")]);
        let unsigned = SignedRequest {
            method: "GET",
            path: "/",
            query: &base,
            headers: &headers,
            body: b"",
        };
        let canonical = canonical_request(&unsigned, &["host".into()], None).unwrap();
        let sig = signature(
            "s3cret",
            "20261128",
            "us-east-1",
            "ec2",
            amz_date,
            &format!("{canonical}\nUNSIGNED-PAYLOAD"),
        );
        let query = format!("{base}&X-Amz-Signature={sig}");
        let req = SignedRequest {
            query: &query,
            ..unsigned
        };
        let secrets = |k: &str| (k == "AKID").then(|| "s3cret".to_owned());
        assert!(
            verify(&req, secrets, at("20261128T120400Z"))
                .unwrap()
                .presigned
        );
        assert_eq!(
            verify(&req, secrets, at("20261128T120600Z"))
                .unwrap_err()
                .code,
            "RequestExpired",
            "past X-Amz-Expires"
        );
        let other_service = query.replace("%2Fec2%2F", "%2Fs3%2F");
        assert_eq!(
            verify(
                &SignedRequest {
                    query: &other_service,
                    ..req
                },
                secrets,
                at("20261128T120000Z")
            )
            .unwrap_err()
            .code,
            "AuthFailure"
        );
    }

    /// A header-signed request over UNSIGNED-PAYLOAD: whoever holds it could
    /// send any body with it.
    #[test]
    fn unsigned_payloads_are_refused_where_there_is_a_body() {
        let amz_date = "20261128T120000Z";
        let body = b"Action=DeregisterImage&ImageId=ami-0123456789abcdef0&Version=2016-11-15";
        let headers = h(&[
            ("Host", "localhost:9000"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Amz-Date", amz_date),
            ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
        ]);
        let names: Vec<String> = ["content-type", "host", "x-amz-content-sha256", "x-amz-date"]
            .map(String::from)
            .to_vec();
        let unsigned = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        let canonical = canonical_request(&unsigned, &names, None).unwrap();
        let sig = signature(
            "s3cret",
            "20261128",
            "us-east-1",
            "ec2",
            amz_date,
            &format!("{canonical}\nUNSIGNED-PAYLOAD"),
        );
        let mut headers = headers.clone();
        headers.push((
            "Authorization".into(),
            format!("{ALGORITHM} Credential=AKID/20261128/us-east-1/ec2/aws4_request, SignedHeaders={}, Signature={sig}", names.join(";")),
        ));
        let req = SignedRequest {
            headers: &headers,
            ..unsigned
        };
        let secrets = |k: &str| (k == "AKID").then(|| "s3cret".to_owned());
        let refused = verify(&req, secrets, at(amz_date)).unwrap_err();
        assert_eq!(refused.code, "AuthFailure");
        assert!(refused.message.contains("UNSIGNED-PAYLOAD"), "{refused:?}");
    }

    /// PutSnapshotBlock's body may go unsigned, as EBS allows, but only when
    /// the signature covers its `x-amz-checksum` header (which the action
    /// checks against the body).
    #[test]
    fn a_checksummed_body_may_be_unsigned_only_with_its_checksum_signed() {
        let amz_date = "20261128T120000Z";
        let body = vec![7u8; 64];
        let sign = |names: &[&str]| {
            let headers = h(&[
                ("Host", "localhost:9000"),
                ("X-Amz-Date", amz_date),
                ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
                ("X-Amz-Checksum", "c3VtLW9mLXRoZS1ibG9jaw=="),
            ]);
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let unsigned = SignedRequest {
                method: "PUT",
                path: "/snapshots/snap-1/blocks/0",
                query: "",
                headers: &headers,
                body: &body,
            };
            let canonical = canonical_request(&unsigned, &names, None).unwrap();
            let sig = signature(
                "s3cret",
                "20261128",
                "us-east-1",
                "ebs",
                amz_date,
                &format!("{canonical}\nUNSIGNED-PAYLOAD"),
            );
            let mut headers = headers.clone();
            headers.push((
                "Authorization".into(),
                format!("{ALGORITHM} Credential=AKID/20261128/us-east-1/ebs/aws4_request, SignedHeaders={}, Signature={sig}", names.join(";")),
            ));
            headers
        };
        let secrets = |k: &str| (k == "AKID").then(|| "s3cret".to_owned());
        let check = |headers: &[(String, String)], checksummed: bool| {
            let req = SignedRequest {
                method: "PUT",
                path: "/snapshots/snap-1/blocks/0",
                query: "",
                headers,
                body: &body,
            };
            match checksummed {
                true => verify_checksummed("ebs", &req, secrets, at(amz_date)),
                false => verify_for("ebs", &req, secrets, at(amz_date)),
            }
        };
        let covered = sign(&[
            "host",
            "x-amz-checksum",
            "x-amz-content-sha256",
            "x-amz-date",
        ]);
        check(&covered, true).unwrap();
        assert!(
            check(&covered, false).is_err(),
            "only where the action checks a checksum"
        );
        let uncovered = sign(&["host", "x-amz-content-sha256", "x-amz-date"]);
        let refused = check(&uncovered, true).unwrap_err();
        assert!(refused.message.contains("UNSIGNED-PAYLOAD"), "{refused:?}");
    }
}
