//! Where archives live: bucket names, `bucket/path` arguments and object keys,
//! parsed at the edge with S3's rules plus amistore's safety rules (no `..`, no
//! empty segments, no control characters), so a key can never escape its bucket,
//! whether the bucket is on S3 or a local directory.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::ImageId;
use crate::newtype::string_newtype;
use crate::{Error, Result};

/// Longest object key S3 accepts, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// An S3 bucket name: 3–63 characters of lowercase letters, digits, `.` and `-`,
/// starting and ending with a letter or digit, without `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BucketName(String);

/// Refuses `s3://bucket…`: EC2's parameters take the bare bucket name.
fn no_scheme(s: &str) -> Result<()> {
    match s.strip_prefix("s3://") {
        Some(rest) => Err(Error::InvalidInput(
            format!("{s:?} has an s3:// scheme; give the bucket without it: {rest:?}").into(),
        )),
        None => Ok(()),
    }
}

impl FromStr for BucketName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        no_scheme(s)?;
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        let ok = (3..=63).contains(&s.len())
            && s.chars().all(|c| alnum(c) || c == '.' || c == '-')
            && s.starts_with(alnum)
            && s.ends_with(alnum)
            && !s.contains("..");
        if !ok {
            return Err(Error::InvalidInput(format!(
                "{s:?} is not a valid bucket name (3-63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit)"
            ).into()));
        }
        Ok(Self(s.to_owned()))
    }
}

/// Checks one `/`-separated segment of a key or path.
fn check_segment(segment: &str, whole: &str) -> Result<()> {
    if segment.is_empty() {
        return Err(Error::InvalidInput(
            format!("{whole:?} has an empty path segment").into(),
        ));
    }
    if segment == "." || segment == ".." {
        return Err(Error::InvalidInput(
            format!("{whole:?} contains a {segment:?} segment").into(),
        ));
    }
    if segment.chars().any(char::is_control) {
        return Err(Error::InvalidInput(
            format!("{whole:?} contains a control character").into(),
        ));
    }
    if segment.starts_with(".amistore") {
        return Err(Error::InvalidInput(
            format!("{whole:?}: names starting with .amistore are reserved").into(),
        ));
    }
    Ok(())
}

/// An object key: `/`-separated non-empty segments, none `.` or `..`, no control
/// characters, at most 1,024 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey(String);

impl FromStr for ObjectKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() || s.len() > MAX_KEY_LEN {
            return Err(Error::InvalidInput(
                format!(
                    "object key must be 1 to {MAX_KEY_LEN} bytes, got {}",
                    s.len()
                )
                .into(),
            ));
        }
        s.split('/').try_for_each(|seg| check_segment(seg, s))?;
        Ok(Self(s.to_owned()))
    }
}

impl ObjectKey {
    /// The key's segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

/// The `Bucket` argument of CreateStoreImageTask: a bucket name optionally followed
/// by a path, `bucket/p1/p2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketPath {
    /// The bucket.
    pub bucket: BucketName,
    /// Path segments inside it (possibly none).
    pub path: Vec<String>,
}

impl FromStr for BucketPath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        no_scheme(s)?;
        let s = s.strip_suffix('/').unwrap_or(s);
        let mut parts = s.split('/');
        let bucket: BucketName = parts.next().unwrap_or_default().parse()?;
        let path: Vec<String> = parts.map(str::to_owned).collect();
        path.iter().try_for_each(|seg| check_segment(seg, s))?;
        Ok(Self { bucket, path })
    }
}

impl BucketPath {
    /// The key a store of `image` writes: `<path>/<ami-id>.bin`.
    pub fn key_for(&self, image: &ImageId) -> ObjectKey {
        let mut key = self.path.join("/");
        if !key.is_empty() {
            key.push('/');
        }
        key.push_str(image.as_str());
        key.push_str(".bin");
        ObjectKey(key)
    }
}

string_newtype!(BucketName, ObjectKey);

impl fmt::Display for BucketPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.bucket.as_str())?;
        self.path.iter().try_for_each(|seg| write!(f, "/{seg}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paths_give_the_seed_keys() {
        let image: ImageId = "ami-0123456789abcdef0".parse().unwrap();
        let p: BucketPath = "my-bucket/p1/p2".parse().unwrap();
        assert_eq!(p.bucket.as_str(), "my-bucket");
        assert_eq!(
            p.key_for(&image).as_str(),
            "p1/p2/ami-0123456789abcdef0.bin"
        );
        let bare: BucketPath = "my-bucket".parse().unwrap();
        assert_eq!(bare.key_for(&image).as_str(), "ami-0123456789abcdef0.bin");
        assert_eq!(
            "my-bucket/p1/".parse::<BucketPath>().unwrap().to_string(),
            "my-bucket/p1"
        );
    }

    #[test]
    fn an_s3_scheme_is_refused_naming_the_bare_bucket() {
        for given in ["s3://my-bucket", "s3://my-bucket/p1"] {
            let e = given.parse::<BucketPath>().unwrap_err().to_string();
            assert!(
                e.contains("s3:// scheme") && e.contains("\"my-bucket"),
                "{e}"
            );
        }
        let e = "s3://my-bucket"
            .parse::<BucketName>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("give the bucket without it"), "{e}");
    }

    #[test]
    fn unsafe_paths_and_keys_are_refused() {
        for bad in [
            "my-bucket/../etc",
            "my-bucket//x",
            "my-bucket/./x",
            "My-Bucket",
            "ab",
            "my-bucket/a\u{7}b",
            "-bucket",
            "a..b",
        ] {
            assert!(bad.parse::<BucketPath>().is_err(), "{bad}");
        }
        for bad in [
            "",
            "../x.bin",
            "a//b",
            "a/./b",
            "a/\nb",
            "/abs",
            "x/",
            ".amistore-uploads/x",
        ] {
            assert!(bad.parse::<ObjectKey>().is_err(), "{bad:?}");
        }
        assert!("a".repeat(1025).parse::<ObjectKey>().is_err());
        assert!(
            "p1/p2/ami-0123456789abcdef0.bin"
                .parse::<ObjectKey>()
                .is_ok()
        );
        let err = "bkt/../x".parse::<BucketPath>().unwrap_err().to_string();
        assert!(err.contains("\"..\""), "{err}");
    }
}
