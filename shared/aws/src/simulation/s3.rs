//! The S3 calls of a store and a restore, as the simulation answers them:
//! CreateMultipartUpload, UploadPart (its `aws-chunked` body decoded, its
//! CRC32C trailer echoed as S3 echoes it), CompleteMultipartUpload,
//! AbortMultipartUpload, PutObject, HeadObject (and GetObjectTagging, which
//! the adapter's HEAD also asks: no tags) and ranged GetObject, on
//! objects kept in memory. Each request waits its first-byte latency, and
//! each body moves at the configured bandwidth of one connection, so a part
//! upload takes as long as its size says.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::HeaderMap;
use sha2::{Digest, Sha256};

use super::{State, query_value, respond};

/// Objects and multipart uploads in progress.
#[derive(Debug, Default)]
pub(super) struct Buckets {
    /// Each object's bytes and ETag (computed once: hashing a large object
    /// on every GET would cost more than the GET).
    objects: HashMap<String, (Bytes, String)>,
    uploads: HashMap<String, (String, BTreeMap<u32, Bytes>)>,
    next_upload: u64,
}

fn error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        "application/xml",
        &[],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message><RequestId>sim</RequestId></Error>")
            .into_bytes(),
    )
}

fn etag(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// A request's trailing headers, lower-cased names.
type Trailers = Vec<(String, String)>;

/// The payload of an `aws-chunked` body (`<hex size>[;…]\r\n<data>\r\n`…,
/// a zero-size chunk, then trailers), and its trailers.
fn dechunk(body: &[u8]) -> Option<(Vec<u8>, Trailers)> {
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    loop {
        let line_end = at + body.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&body[at..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            break;
        }
        out.extend_from_slice(body.get(at..at + size)?);
        at += size + 2;
    }
    let trailers = std::str::from_utf8(body.get(at..)?)
        .ok()?
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((out, trailers))
}

/// Waits as long as `bytes` take at the bandwidth of one connection.
async fn transfer(state: &State, bytes: usize) {
    let rate = state.config.s3_bytes_per_second.max(1.0);
    tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / rate)).await;
}

pub(super) async fn answer(
    state: &State,
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response<Full<Bytes>> {
    state.stats.s3_requests.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(state.config.s3_first_byte).await;
    let Some((bucket, key)) = path.trim_start_matches('/').split_once('/') else {
        return error(
            400,
            "InvalidRequest",
            "bucket-level calls are not simulated",
        );
    };
    let object = format!("{bucket}/{key}");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let has = |name: &str| query.split('&').any(|p| p.split('=').next() == Some(name));
    let body_in = body.len();
    state
        .stats
        .s3_bytes_in
        .fetch_add(body_in as u64, Ordering::Relaxed);
    transfer(state, body_in).await;
    let mut buckets = state.buckets.lock().await;
    match method {
        "POST" if has("uploads") => {
            buckets.next_upload += 1;
            let id = format!("sim-upload-{}", buckets.next_upload);
            buckets
                .uploads
                .insert(id.clone(), (object, BTreeMap::new()));
            respond(
                200,
                "application/xml",
                &[],
                format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{key}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>")
                    .into_bytes(),
            )
        }
        "PUT" if has("uploadId") => {
            let (Some(id), Some(number)) = (
                query_value(query, "uploadId"),
                query_value(query, "partNumber").and_then(|n| n.parse::<u32>().ok()),
            ) else {
                return error(
                    400,
                    "InvalidRequest",
                    "UploadPart needs uploadId and partNumber",
                );
            };
            let chunked = header("content-encoding").is_some_and(|e| e.contains("aws-chunked"))
                || header("x-amz-content-sha256").is_some_and(|s| s.starts_with("STREAMING-"));
            let (data, trailers) = if chunked {
                match dechunk(&body) {
                    Some(decoded) => decoded,
                    None => {
                        return error(400, "IncompleteBody", "the aws-chunked body is malformed");
                    }
                }
            } else {
                (body.to_vec(), Vec::new())
            };
            if let Some(len) = header("x-amz-decoded-content-length")
                && len.parse::<usize>().ok() != Some(data.len())
            {
                return error(400, "IncompleteBody", "the body is not as long as declared");
            }
            let Some((_, parts)) = buckets.uploads.get_mut(&id) else {
                return error(404, "NoSuchUpload", "no such upload");
            };
            let tag = etag(&data);
            parts.insert(number, Bytes::from(data));
            state.stats.parts_uploaded.fetch_add(1, Ordering::Relaxed);
            let mut out = vec![("etag", tag)];
            let checksum = trailers
                .into_iter()
                .find(|(k, _)| k == "x-amz-checksum-crc32c")
                .map(|(_, v)| v)
                .or_else(|| header("x-amz-checksum-crc32c").map(str::to_owned));
            if let Some(sum) = checksum {
                out.push(("x-amz-checksum-crc32c", sum));
            }
            respond(200, "application/xml", &out, Vec::new())
        }
        "POST" if has("uploadId") => {
            let Some(id) = query_value(query, "uploadId") else {
                return error(400, "InvalidRequest", "no uploadId");
            };
            let Some((target, parts)) = buckets.uploads.remove(&id) else {
                return error(404, "NoSuchUpload", "no such upload");
            };
            // The parts the request names, in its order.
            let listed = String::from_utf8_lossy(&body);
            let mut joined = Vec::new();
            for number in listed.split("<PartNumber>").skip(1) {
                let n = number
                    .split("</PartNumber>")
                    .next()
                    .and_then(|n| n.trim().parse::<u32>().ok());
                match n.and_then(|n| parts.get(&n)) {
                    Some(part) => joined.extend_from_slice(part),
                    None => return error(400, "InvalidPart", "a listed part was not uploaded"),
                }
            }
            let tag = format!("\"{}-{}\"", etag(&joined).trim_matches('"'), parts.len());
            buckets
                .objects
                .insert(target, (Bytes::from(joined), tag.clone()));
            respond(
                200,
                "application/xml",
                &[],
                format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><CompleteMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{key}</Key><ETag>{}</ETag></CompleteMultipartUploadResult>", tag.replace('"', "&quot;"))
                    .into_bytes(),
            )
        }
        "DELETE" if has("uploadId") => {
            if let Some(id) = query_value(query, "uploadId") {
                buckets.uploads.remove(&id);
            }
            respond(204, "application/xml", &[], Vec::new())
        }
        "PUT" => {
            let tag = etag(&body);
            buckets.objects.insert(object, (body, tag.clone()));
            respond(200, "application/xml", &[("etag", tag)], Vec::new())
        }
        "GET" if has("tagging") => respond(
            200,
            "application/xml",
            &[],
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Tagging><TagSet></TagSet></Tagging>"
                .to_vec(),
        ),
        "HEAD" | "GET" => {
            let Some((data, tag)) = buckets.objects.get(&object).cloned() else {
                return error(404, "NoSuchKey", "no such key");
            };
            drop(buckets);
            let common = vec![
                ("etag", tag),
                ("last-modified", "Mon, 30 Nov 2026 00:00:00 GMT".to_owned()),
            ];
            if method == "HEAD" {
                let mut response = respond(200, "application/octet-stream", &common, Vec::new());
                response.headers_mut().insert(
                    hyper::header::CONTENT_LENGTH,
                    hyper::header::HeaderValue::from(data.len()),
                );
                return response;
            }
            let (status, slice, mut headers) =
                match header("range").and_then(|r| range(r, data.len())) {
                    Some((from, to)) => (
                        206,
                        data.slice(from..=to),
                        vec![("content-range", format!("bytes {from}-{to}/{}", data.len()))],
                    ),
                    None => (200, data.clone(), Vec::new()),
                };
            headers.extend(common);
            state
                .stats
                .s3_bytes_out
                .fetch_add(slice.len() as u64, Ordering::Relaxed);
            transfer(state, slice.len()).await;
            respond(status, "application/octet-stream", &headers, slice.to_vec())
        }
        _ => error(405, "MethodNotAllowed", "not simulated"),
    }
}

/// `bytes=a-b` within an object of `len` bytes, as an inclusive range.
fn range(header: &str, len: usize) -> Option<(usize, usize)> {
    let (from, to) = header.strip_prefix("bytes=")?.split_once('-')?;
    let from: usize = from.parse().ok()?;
    let to: usize = to.parse::<usize>().ok()?.min(len.checked_sub(1)?);
    (from <= to).then_some((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_with_their_trailers() {
        let body =
            b"5;chunk-signature=x\r\nhello\r\n3\r\nabc\r\n0\r\nx-amz-checksum-crc32c:AAAA\r\n\r\n";
        let (data, trailers) = dechunk(body).unwrap();
        assert_eq!(data, b"helloabc");
        assert_eq!(
            trailers,
            [("x-amz-checksum-crc32c".to_owned(), "AAAA".to_owned())]
        );
        assert!(dechunk(b"5\r\nhel").is_none(), "a truncated chunk");
        assert_eq!(range("bytes=2-5", 10), Some((2, 5)));
        assert_eq!(range("bytes=8-20", 10), Some((8, 9)));
        assert_eq!(range("bytes=12-20", 10), None);
    }
}
