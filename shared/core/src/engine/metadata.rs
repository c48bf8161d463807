//! The S3 user metadata a stored object carries, as the AWS feature documents it:
//! the AMI's name, description, registration date and owner account, and when it
//! was stored.
//!
//! S3 metadata values must be printable ASCII. Other text (a description in
//! Japanese, say) is sent the way S3 itself returns such values: as one RFC 2047
//! encoded word, `=?UTF-8?B?<base64>?=`.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::ports::Image;

/// Metadata key for the AMI name (sent as `x-amz-meta-ami-name`).
pub const AMI_NAME: &str = "ami-name";
/// Metadata key for the AMI description.
pub const AMI_DESCRIPTION: &str = "ami-description";
/// Metadata key for the AMI registration date (ISO 8601).
pub const AMI_REGISTRATION_DATE: &str = "ami-registration-date";
/// Metadata key for the account that owns the AMI.
pub const AMI_OWNER_ACCOUNT: &str = "ami-owner-account";
/// Metadata key for the time the store task started (ISO 8601).
pub const AMI_STORE_DATE: &str = "ami-store-date";

/// `value` as S3 can carry it: itself if it is printable ASCII, otherwise one
/// RFC 2047 B-encoded word of its UTF-8 bytes.
pub fn encode_value(value: &str) -> String {
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b)) && !value.starts_with("=?");
    if plain {
        value.to_owned()
    } else {
        format!("=?UTF-8?B?{}?=", STANDARD.encode(value))
    }
}

/// Reverses [`encode_value`]: decodes a UTF-8 B-encoded word, and returns any
/// other value unchanged.
pub fn decode_value(value: &str) -> String {
    value
        .strip_prefix("=?UTF-8?B?")
        .and_then(|rest| rest.strip_suffix("?="))
        .and_then(|b64| STANDARD.decode(b64).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| value.to_owned())
}

/// The metadata of an object storing `image`, stored at `stored_at` (ISO 8601).
pub fn object_metadata(image: &Image, stored_at: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(AMI_NAME.into(), encode_value(image.metadata.name.as_str()));
    if let Some(d) = image
        .metadata
        .description
        .as_deref()
        .filter(|d| !d.is_empty())
    {
        m.insert(AMI_DESCRIPTION.into(), encode_value(d));
    }
    m.insert(
        AMI_REGISTRATION_DATE.into(),
        encode_value(&image.creation_date),
    );
    m.insert(AMI_OWNER_ACCOUNT.into(), image.owner_id.to_string());
    m.insert(AMI_STORE_DATE.into(), stored_at.to_owned());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_values_are_rfc2047_encoded_and_round_trip() {
        assert_eq!(encode_value("web server (v2)"), "web server (v2)");
        let jp = "ウェブサーバー";
        let encoded = encode_value(jp);
        assert!(encoded.starts_with("=?UTF-8?B?") && encoded.ends_with("?="));
        assert!(encoded.bytes().all(|b| (0x20..0x7f).contains(&b)));
        assert_eq!(decode_value(&encoded), jp);
        // S3's own documented example decodes.
        assert_eq!(
            decode_value("=?UTF-8?B?w4PChE3Dg8KEWsODwpXDg8KRIFMz?="),
            "Ã\u{84}MÃ\u{84}ZÃ\u{95}Ã\u{91} S3"
        );
        // A tab is not printable; a value that looks encoded is encoded again.
        assert_ne!(encode_value("a\tb"), "a\tb");
        assert_eq!(
            decode_value(&encode_value("=?UTF-8?B?x?=")),
            "=?UTF-8?B?x?="
        );
        assert_eq!(decode_value("=?UTF-8?B?***?="), "=?UTF-8?B?***?=");
    }
}
