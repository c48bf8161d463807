//! Resource identifiers in AWS's forms (`ami-…`, `snap-…`, 12-digit accounts) and
//! the lifecycle states images and snapshots share, parsed at the edge.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::newtype::string_newtype;
use crate::{Error, Result};

/// Hex digits in a newly minted id, as EC2 mints them today.
const ID_HEX_DIGITS: usize = 17;

/// 17 fresh hex digits: BLAKE3 of the time, the process and a counter. Unique
/// across processes and calls without needing a random source.
fn fresh_hex() -> String {
    unique_token()[..ID_HEX_DIGITS].to_owned()
}

/// 64 hex digits unique across processes and calls (upload ids, request ids).
pub fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = blake3::Hasher::new();
    hasher.update(&nanos.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.finalize().to_hex().to_string()
}

macro_rules! resource_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// A new, unique id.
            pub fn fresh() -> Self {
                Self(format!("{}{}", $prefix, fresh_hex()))
            }
        }

        string_newtype!($name);

        impl FromStr for $name {
            type Err = Error;
            /// Accepts the prefix followed by 8 or 17 lowercase hex digits.
            fn from_str(s: &str) -> Result<Self> {
                let ok = s.strip_prefix($prefix).is_some_and(|hex| {
                    (hex.len() == 8 || hex.len() == ID_HEX_DIGITS)
                        && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                });
                if !ok {
                    return Err(Error::InvalidInput(format!(
                        concat!("{:?} is not a valid ", $what, " id (expected ", $prefix, " and 8 or 17 hex digits)"),
                        s
                    ).into()));
                }
                Ok(Self(s.to_owned()))
            }
        }
    };
}

resource_id!(
    /// An AMI id, `ami-` and hex digits.
    ImageId, "ami-", "image"
);
resource_id!(
    /// An EBS snapshot id, `snap-` and hex digits.
    SnapshotId, "snap-", "snapshot"
);
resource_id!(
    /// A store or restore task id, `task-` and hex digits (amistore's own).
    TaskId, "task-", "task"
);

/// A 12-digit AWS account id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

impl AccountId {
    /// The account local, single-user use runs as when none is configured.
    pub fn local_default() -> Self {
        Self("000000000000".into())
    }
}

string_newtype!(AccountId);

impl FromStr for AccountId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidInput(
                format!("{s:?} is not a 12-digit account id").into(),
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

/// Lifecycle state of an image or a snapshot, as EC2 reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceState {
    /// Being created (a restore is writing it).
    Pending,
    /// Ready to use.
    Available,
    /// Creation failed.
    Failed,
}

impl ResourceState {
    /// EC2's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceState::Pending => "pending",
            ResourceState::Available => "available",
            ResourceState::Failed => "failed",
        }
    }
}

impl fmt::Display for ResourceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_in_aws_form_only() {
        assert!("ami-0123456789abcdef0".parse::<ImageId>().is_ok());
        assert!("ami-12345678".parse::<ImageId>().is_ok());
        for bad in [
            "ami-",
            "ami-0123456789ABCDEF0",
            "snap-0123456789abcdef0",
            "ami-0123456789abcdefg",
            "ami-123",
        ] {
            assert!(bad.parse::<ImageId>().is_err(), "{bad}");
        }
        let err = "bogus".parse::<SnapshotId>().unwrap_err().to_string();
        assert!(
            err.contains("snapshot id") && err.contains("bogus"),
            "{err}"
        );
        assert!("123456789012".parse::<AccountId>().is_ok());
        assert!("12345678901".parse::<AccountId>().is_err());
    }

    #[test]
    fn fresh_ids_are_valid_and_distinct() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| ImageId::fresh().to_string()).collect();
        assert_eq!(ids.len(), 1000);
        for id in ids.iter().take(5) {
            assert!(id.parse::<ImageId>().is_ok(), "{id}");
            assert_eq!(id.len(), 4 + 17);
        }
        let snap = SnapshotId::fresh();
        assert_eq!(serde_json::to_string(&snap).unwrap(), format!("\"{snap}\""));
        assert!(serde_json::from_str::<SnapshotId>("\"snap-xyz\"").is_err());
    }
}
