//! A subset of S3 (path-style, signed for the `s3` service) over the server's
//! buckets, so that `aws s3 mb|ls|cp|rm` and `aws s3api` reach the buckets and
//! stored archives of `amistore serve` as they would on AWS: ListBuckets,
//! CreateBucket, HeadBucket, ListObjectsV2 (and ListObjects), HeadObject,
//! GetObject (whole or ranged) and DeleteObject.
//!
//! Archives are written by store tasks, so uploads (PutObject, multipart) are
//! not offered; neither is DeleteBucket. Those, and any other S3 action, are
//! answered `NotImplemented` (501). A caller sees and touches only its
//! account's buckets: another account's bucket is `AccessDenied`, as on S3.
//!
//! Answers are held in memory, so one is at most [`MAX_GET_BYTES`]: a larger
//! object is read in ranges (`aws s3 cp` reads objects over 8 MiB in 8 MiB
//! ranges by default), and a GET of it without a range says so.

use std::sync::Arc;

use amistore_core::Error as CoreError;
use amistore_core::engine::Engine;
use amistore_core::ids::AccountId;
use amistore_core::ports::{BucketAdmin, MAX_LIST_KEYS, ObjectSummary};
use amistore_core::storage::{BucketName, ObjectKey};
use time::OffsetDateTime;
use time::format_description::well_known::{Rfc2822, Rfc3339};

use crate::ApiError;
use crate::query::Params;
use crate::service::HttpResponse;
use crate::xml::escape;

/// The service name S3 requests are signed for.
pub const SERVICE: &str = "s3";
/// The largest answer body: a GET of more is refused (read it in ranges).
pub const MAX_GET_BYTES: u64 = 16 << 20;

const XML: &str = "application/xml";
const NAMESPACE: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// An S3 error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    /// S3's error code (`NoSuchKey`, …).
    pub code: &'static str,
    /// HTTP status.
    pub status: u16,
    /// Readable message.
    pub message: String,
}

impl S3Error {
    fn new(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            status,
            message: message.into(),
        }
    }

    fn no_bucket(bucket: &str) -> Self {
        Self::new(
            "NoSuchBucket",
            404,
            format!("The specified bucket {bucket} does not exist"),
        )
    }

    fn not_implemented(what: &str) -> Self {
        Self::new(
            "NotImplemented",
            501,
            format!("{what} is not offered by amistore serve"),
        )
    }

    /// The answer: S3's `<Error>` document (no body for HEAD, as S3).
    pub fn response(&self, request_id: &str, head: bool) -> HttpResponse {
        let body = match head {
            true => String::new(),
            false => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><RequestId>{request_id}</RequestId></Error>",
                self.code,
                escape(&self.message)
            ),
        };
        HttpResponse::text(self.status, XML, body)
    }
}

/// Authentication and parameter errors in S3's words.
impl From<ApiError> for S3Error {
    fn from(e: ApiError) -> Self {
        let (code, status) = match e.code.as_ref() {
            "RequestExpired" => ("RequestTimeTooSkewed", 403),
            "UnauthorizedOperation" | "AuthFailure" => ("AccessDenied", 403),
            "SignatureDoesNotMatch" => ("SignatureDoesNotMatch", 403),
            _ if e.status >= 500 => ("InternalError", 500),
            _ => ("InvalidArgument", 400),
        };
        Self::new(code, status, e.message)
    }
}

impl From<CoreError> for S3Error {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidInput(m) => Self::new("InvalidArgument", 400, m),
            CoreError::AlreadyExists(m) => Self::new("BucketAlreadyExists", 409, m),
            CoreError::IncorrectState(m) => Self::new("PreconditionFailed", 412, m),
            CoreError::NotFound(m) => Self::new("NoSuchKey", 404, m),
            other => Self::new("InternalError", 500, other.to_string()),
        }
    }
}

/// What [`answer`] needs of the HTTP request.
pub struct Request<'a> {
    /// Method.
    pub method: &'a str,
    /// Path, still percent-encoded.
    pub path: &'a str,
    /// Query, without `?`.
    pub query: &'a str,
    /// Headers.
    pub headers: &'a [(String, String)],
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }
}

/// The action a request names, for the log; `None` for an unknown one.
pub fn action_of(method: &str, path: &str, query: &str) -> Option<&'static str> {
    let (bucket, key) = split_path(path).ok()?;
    let has = |name: &str| query.split('&').any(|p| p.split('=').next() == Some(name));
    Some(match (method, bucket.is_some(), key.is_some()) {
        ("GET", false, _) => "ListBuckets",
        ("PUT", true, false) => "CreateBucket",
        ("HEAD", true, false) => "HeadBucket",
        ("GET", true, false) if has("list-type") => "ListObjectsV2",
        ("GET", true, false) => "ListObjects",
        ("HEAD", true, true) => "HeadObject",
        ("GET", true, true) => "GetObject",
        ("DELETE", true, true) => "DeleteObject",
        _ => return None,
    })
}

/// The bucket and key of a path-style path, percent-decoded.
fn split_path(path: &str) -> Result<(Option<String>, Option<String>), S3Error> {
    let decoded = percent_decode(path.trim_start_matches('/')).ok_or_else(|| {
        S3Error::new(
            "InvalidURI",
            400,
            "the path is not valid percent-encoded UTF-8",
        )
    })?;
    Ok(match decoded.split_once('/') {
        None if decoded.is_empty() => (None, None),
        None => (Some(decoded), None),
        Some((bucket, "")) => (Some(bucket.to_owned()), None),
        Some((bucket, key)) => (Some(bucket.to_owned()), Some(key.to_owned())),
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Answers one S3 request for `account`.
pub fn answer(
    engine: &Engine,
    admin: Option<&Arc<dyn BucketAdmin>>,
    account: &AccountId,
    req: &Request<'_>,
) -> Result<HttpResponse, S3Error> {
    let admin = admin.ok_or_else(|| S3Error::not_implemented("S3"))?;
    let (bucket, key) = split_path(req.path)?;
    let query = Params::parse(req.query.as_bytes())?;
    let Some(bucket) = bucket else {
        return match req.method {
            "GET" => list_buckets(admin.as_ref(), account, query),
            other => Err(S3Error::not_implemented(&format!("{other} /"))),
        };
    };
    let name: BucketName = bucket
        .parse()
        .map_err(|e: CoreError| S3Error::new("InvalidBucketName", 400, e.to_string()))?;
    if (req.method, key.is_none()) == ("PUT", true) {
        // CreateBucketConfiguration (a region) may come as the body; every
        // bucket here is in the server's one region.
        drop(query);
        admin.create_bucket(account, &name).map_err(|e| match e {
            CoreError::AlreadyExists(_) => S3Error::new(
                "BucketAlreadyExists",
                409,
                format!("The requested bucket name {name} is not available"),
            ),
            other => other.into(),
        })?;
        let mut created = HttpResponse::text(200, XML, String::new());
        created
            .headers
            .push(("Location".into(), format!("/{name}")));
        return Ok(created);
    }
    // Everything else needs the caller's own bucket.
    match admin.owner_of(&name)? {
        None => return Err(S3Error::no_bucket(&bucket)),
        Some(owner) if owner != *account => {
            return Err(S3Error::new("AccessDenied", 403, "Access Denied"));
        }
        Some(_) => {}
    }
    match (req.method, key) {
        ("HEAD", None) => {
            query.finish()?;
            Ok(HttpResponse::text(200, XML, String::new()))
        }
        ("GET", None) => list_objects(admin.as_ref(), &name, query),
        ("HEAD", Some(key)) => {
            query.finish()?;
            object(engine, &name, &key, req, true)
        }
        ("GET", Some(key)) => {
            // The CLI may ask for a part number; only whole objects here.
            query.finish()?;
            object(engine, &name, &key, req, false)
        }
        ("DELETE", Some(key)) => {
            query.finish()?;
            let key = object_key(&key)?;
            engine.objects.delete_object(&name, &key)?;
            Ok(HttpResponse::text(204, XML, String::new()))
        }
        ("PUT", Some(_)) => Err(S3Error::not_implemented(
            "PutObject (archives are written by store tasks)",
        )),
        ("DELETE", None) => Err(S3Error::not_implemented("DeleteBucket")),
        (other, _) => Err(S3Error::not_implemented(other)),
    }
}

fn object_key(key: &str) -> Result<ObjectKey, S3Error> {
    key.parse()
        .map_err(|e: CoreError| S3Error::new("InvalidArgument", 400, e.to_string()))
}

fn document(root: &str, inner: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{root} xmlns=\"{NAMESPACE}\">{inner}</{root}>"
    )
}

fn list_buckets(
    admin: &dyn BucketAdmin,
    account: &AccountId,
    mut query: Params,
) -> Result<HttpResponse, S3Error> {
    // Newer CLIs page ListBuckets; every bucket fits one page here.
    for name in [
        "max-buckets",
        "continuation-token",
        "prefix",
        "bucket-region",
    ] {
        let _ = query.opt(name);
    }
    query.finish()?;
    let mut inner =
        format!("<Owner><ID>{account}</ID><DisplayName>{account}</DisplayName></Owner><Buckets>");
    for b in admin.list_buckets(account)? {
        inner.push_str(&format!(
            "<Bucket><Name>{}</Name><CreationDate>{}</CreationDate></Bucket>",
            b.name,
            millis(&b.creation_date)
        ));
    }
    inner.push_str("</Buckets>");
    Ok(HttpResponse::text(
        200,
        XML,
        document("ListAllMyBucketsResult", &inner),
    ))
}

/// `2026-11-30T12:00:00Z` as S3 writes it, `2026-11-30T12:00:00.000Z`.
fn millis(rfc3339: &str) -> String {
    match rfc3339.strip_suffix('Z') {
        Some(base) if !base.contains('.') => format!("{base}.000Z"),
        _ => rfc3339.to_owned(),
    }
}

/// ListObjectsV2 (`list-type=2`) and ListObjects: keys under `prefix`,
/// rolled up at `delimiter` into common prefixes, a page at a time.
fn list_objects(
    admin: &dyn BucketAdmin,
    bucket: &BucketName,
    mut q: Params,
) -> Result<HttpResponse, S3Error> {
    let v2 = match q.opt("list-type").as_deref() {
        None => false,
        Some("2") => true,
        Some(other) => {
            return Err(S3Error::new(
                "InvalidArgument",
                400,
                format!("list-type {other:?} is not 2"),
            ));
        }
    };
    let prefix = q.opt("prefix").unwrap_or_default();
    let delimiter = q.opt("delimiter").filter(|d| !d.is_empty());
    let url_encoded = match q.opt("encoding-type").as_deref() {
        None => false,
        Some("url") => true,
        Some(other) => {
            return Err(S3Error::new(
                "InvalidArgument",
                400,
                format!("encoding-type {other:?} is not url"),
            ));
        }
    };
    let max = match q.opt("max-keys") {
        None => MAX_LIST_KEYS,
        Some(m) => m
            .parse::<usize>()
            .map_err(|_| {
                S3Error::new(
                    "InvalidArgument",
                    400,
                    format!("max-keys {m:?} is not a number"),
                )
            })?
            .min(MAX_LIST_KEYS),
    };
    let (after, token_field) = if v2 {
        let _ = q.opt("fetch-owner");
        let token = q.opt("continuation-token");
        let start_after = q.opt("start-after").unwrap_or_default();
        let after = match &token {
            Some(t) => decode_token(t)?,
            None => start_after.clone(),
        };
        (after, token)
    } else {
        (q.opt("marker").unwrap_or_default(), None)
    };
    let _ = q.opt("x-id");
    q.finish()?;

    // Keys are read a page at a time; a delimiter rolls many keys into one
    // prefix, so pages are read until `max` entries or the end.
    let mut objects: Vec<ObjectSummary> = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut last_entry = String::new();
    let mut cursor = after.clone();
    let mut truncated = false;
    'pages: loop {
        // `max-keys=0` asks for nothing (S3 answers an empty, untruncated page).
        if max == 0 {
            break;
        }
        let page = admin.list_objects(bucket, &prefix, &cursor, MAX_LIST_KEYS)?;
        let last_page = page.len() < MAX_LIST_KEYS;
        for o in page {
            cursor = o.key.as_str().to_owned();
            let rolled = delimiter.as_deref().and_then(|d| {
                let key = o.key.as_str();
                key[prefix.len()..]
                    .find(d)
                    .map(|at| key[..prefix.len() + at + d.len()].to_owned())
            });
            // A prefix already answered (on this page or an earlier one).
            if rolled
                .as_ref()
                .is_some_and(|p| *p <= after || prefixes.last() == Some(p))
            {
                continue;
            }
            if objects.len() + prefixes.len() == max {
                truncated = true;
                break 'pages;
            }
            match rolled {
                Some(p) => {
                    last_entry.clone_from(&p);
                    // Past every key under this prefix.
                    cursor = format!("{p}\u{10FFFF}");
                    prefixes.push(p);
                    continue 'pages;
                }
                None => {
                    last_entry = o.key.as_str().to_owned();
                    objects.push(o);
                }
            }
        }
        if last_page {
            break;
        }
    }
    let next = truncated.then_some(last_entry);
    let enc = |s: &str| match url_encoded {
        true => escape(&crate::sigv4::uri_encode(s, true)),
        false => escape(s),
    };
    let mut inner = format!("<Name>{bucket}</Name><Prefix>{}</Prefix>", enc(&prefix));
    inner.push_str(&format!("<MaxKeys>{max}</MaxKeys>"));
    if let Some(d) = &delimiter {
        inner.push_str(&format!("<Delimiter>{}</Delimiter>", enc(d)));
    }
    if url_encoded {
        inner.push_str("<EncodingType>url</EncodingType>");
    }
    inner.push_str(&format!("<IsTruncated>{}</IsTruncated>", next.is_some()));
    if v2 {
        inner.push_str(&format!(
            "<KeyCount>{}</KeyCount>",
            objects.len() + prefixes.len()
        ));
        if let Some(t) = &token_field {
            inner.push_str(&format!(
                "<ContinuationToken>{}</ContinuationToken>",
                escape(t)
            ));
        }
        if let Some(n) = &next {
            inner.push_str(&format!(
                "<NextContinuationToken>{}</NextContinuationToken>",
                encode_token(n)
            ));
        }
    } else if let Some(n) = &next {
        inner.push_str(&format!("<NextMarker>{}</NextMarker>", enc(n)));
    }
    for o in &objects {
        inner.push_str(&format!(
            "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            enc(o.key.as_str()),
            millis(&o.last_modified),
            escape(&o.etag),
            o.size
        ));
    }
    for p in &prefixes {
        inner.push_str(&format!(
            "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
            enc(p)
        ));
    }
    Ok(HttpResponse::text(
        200,
        XML,
        document("ListBucketResult", &inner),
    ))
}

fn encode_token(after: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(after)
}

fn decode_token(token: &str) -> Result<String, S3Error> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            S3Error::new(
                "InvalidArgument",
                400,
                "The continuation token provided is incorrect",
            )
        })
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` of an object of `size` bytes.
fn byte_range(spec: &str, size: u64) -> Result<std::ops::Range<u64>, S3Error> {
    let bad = || {
        S3Error::new(
            "InvalidRange",
            416,
            format!("The requested range {spec:?} is not satisfiable"),
        )
    };
    let (first, last) = spec
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let range = match (first.parse::<u64>().ok(), last.parse::<u64>().ok()) {
        (Some(a), Some(b)) if a <= b => a..(b + 1).min(size),
        (Some(a), None) if last.is_empty() => a..size,
        (None, Some(n)) if first.is_empty() => size.saturating_sub(n)..size,
        _ => return Err(bad()),
    };
    if range.start >= size {
        return Err(bad());
    }
    Ok(range)
}

fn http_date(rfc3339: &str) -> String {
    OffsetDateTime::parse(rfc3339, &Rfc3339)
        .ok()
        .and_then(|t| t.format(&Rfc2822).ok())
        .map(|t| t.replace("+0000", "GMT"))
        .unwrap_or_default()
}

/// HeadObject and GetObject.
fn object(
    engine: &Engine,
    bucket: &BucketName,
    key: &str,
    req: &Request<'_>,
    head: bool,
) -> Result<HttpResponse, S3Error> {
    let key = object_key(key)?;
    let info = engine
        .objects
        .head_object(bucket, &key)?
        .ok_or_else(|| S3Error::new("NoSuchKey", 404, "The specified key does not exist."))?;
    if req
        .header("If-Match")
        .is_some_and(|expected| expected != info.etag && expected != "*")
    {
        return Err(S3Error::new(
            "PreconditionFailed",
            412,
            "At least one of the pre-conditions you specified did not hold",
        ));
    }
    if req
        .header("If-None-Match")
        .is_some_and(|e| e == info.etag || e == "*")
    {
        return Ok(HttpResponse::text(304, XML, String::new()));
    }
    for unsupported in ["If-Modified-Since", "If-Unmodified-Since"] {
        if req.header(unsupported).is_some() {
            return Err(S3Error::not_implemented(unsupported));
        }
    }
    let range = req
        .header("Range")
        .map(|r| byte_range(r, info.size))
        .transpose()?;
    let span = range.clone().unwrap_or(0..info.size);
    let mut headers = vec![
        ("ETag".to_owned(), info.etag.clone()),
        ("Last-Modified".to_owned(), http_date(&info.last_modified)),
        ("Accept-Ranges".to_owned(), "bytes".to_owned()),
    ];
    for (k, v) in &info.metadata {
        headers.push((format!("x-amz-meta-{k}"), v.clone()));
    }
    if !info.tags.is_empty() {
        headers.push((
            "x-amz-tagging-count".to_owned(),
            info.tags.len().to_string(),
        ));
    }
    if let Some(r) = &range {
        headers.push((
            "Content-Range".to_owned(),
            format!("bytes {}-{}/{}", r.start, r.end - 1, info.size),
        ));
    }
    let status = if range.is_some() { 206 } else { 200 };
    if head {
        headers.push((
            "Content-Length".to_owned(),
            (span.end - span.start).to_string(),
        ));
        return Ok(HttpResponse {
            status,
            content_type: "application/octet-stream",
            headers,
            body: Vec::new(),
        });
    }
    if span.end - span.start > MAX_GET_BYTES {
        return Err(S3Error::new(
            "InvalidRequest",
            400,
            format!(
                "amistore serve answers at most {} MiB at once; read this {}-byte object in ranges (aws s3 cp does)",
                MAX_GET_BYTES >> 20,
                info.size
            ),
        ));
    }
    let body = engine
        .objects
        .get_range(bucket, &key, span, Some(&info.etag))?;
    Ok(HttpResponse {
        status,
        content_type: "application/octet-stream",
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_s3s() {
        assert_eq!(byte_range("bytes=0-9", 100).unwrap(), 0..10);
        assert_eq!(byte_range("bytes=90-", 100).unwrap(), 90..100);
        assert_eq!(byte_range("bytes=-10", 100).unwrap(), 90..100);
        assert_eq!(byte_range("bytes=50-500", 100).unwrap(), 50..100);
        for bad in [
            "bytes=100-",
            "bytes=9-1",
            "bytes=x-1",
            "items=0-1",
            "bytes=-",
        ] {
            assert_eq!(
                byte_range(bad, 100).unwrap_err().code,
                "InvalidRange",
                "{bad}"
            );
        }
    }

    #[test]
    fn paths_split_into_bucket_and_key() {
        assert_eq!(split_path("/").unwrap(), (None, None));
        assert_eq!(split_path("/b").unwrap(), (Some("b".into()), None));
        assert_eq!(split_path("/b/").unwrap(), (Some("b".into()), None));
        assert_eq!(
            split_path("/b/p%2Fq/a%20b.bin").unwrap(),
            (Some("b".into()), Some("p/q/a b.bin".into()))
        );
        assert!(split_path("/b/%ff").is_err());
        assert_eq!(
            action_of("GET", "/b", "list-type=2&prefix="),
            Some("ListObjectsV2")
        );
        assert_eq!(action_of("PUT", "/b/k", ""), None);
    }
}
