//! AMI metadata as amistore records it: everything RegisterImage needs to bring
//! an image back, plus provenance (source image, owner, dates) and tags.
//!
//! Values that EC2 constrains are parsed into types at the edge ([`ImageName`],
//! [`DeviceName`], [`Tag`]) so the rest of the code never re-checks them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::newtype::string_newtype;
use crate::{Error, Result};

/// An AMI name: 3–128 characters from the set RegisterImage documents
/// (letters, digits, `()[] ./-'@_`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageName(String);
string_newtype!(ImageName);

impl FromStr for ImageName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let len = s.chars().count();
        if !(3..=128).contains(&len) {
            return Err(Error::InvalidInput(
                format!("image name must be 3 to 128 characters long, got {len}").into(),
            ));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(*c)))
        {
            return Err(Error::InvalidInput(format!(
                "image name {s:?} contains {bad:?}; allowed are letters, digits, spaces and ()[]./-'@_"
            ).into()));
        }
        Ok(Self(s.to_owned()))
    }
}

/// The prefix of the tags amistore keeps its own state in (on EC2); a user's
/// tag, an archive's or an import's may not use it.
pub const RESERVED_TAG_PREFIX: &str = "amistore:";

/// Rejects text that EC2's XML (XML 1.0) cannot carry, or that no name or
/// tag should hold: control characters, and the noncharacters U+FFFE and
/// U+FFFF. One rule for every way a value comes in: the API, an import, an
/// archive's manifest.
pub fn check_text(what: &str, s: &str) -> Result<()> {
    if let Some(bad) = s
        .chars()
        .find(|c| c.is_control() || matches!(*c, '\u{FFFE}' | '\u{FFFF}'))
    {
        return Err(Error::InvalidInput(
            format!(
                "{what} contains the character U+{:04X}, which is not allowed",
                bad as u32
            )
            .into(),
        ));
    }
    Ok(())
}

/// An AMI description: at most 255 characters, no control characters.
pub fn check_description(s: &str) -> Result<()> {
    let len = s.chars().count();
    if len > 255 {
        return Err(Error::InvalidInput(
            format!("image description must be at most 255 characters, got {len}").into(),
        ));
    }
    check_text("the image description", s)
}

/// A block device name such as `/dev/xvda` or `/dev/sda1` (or `xvdb` without `/dev/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceName(String);
string_newtype!(DeviceName);

impl FromStr for DeviceName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let base = s.strip_prefix("/dev/").unwrap_or(s);
        let ok = !base.is_empty()
            && base.len() <= 32
            && base.starts_with(|c: char| c.is_ascii_lowercase())
            && base
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            return Err(Error::InvalidInput(
                format!("device name {s:?} is not a block device name like /dev/xvda or /dev/sda1")
                    .into(),
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl DeviceName {
    /// The name without a leading `/dev/`: `xvda` for `/dev/xvda`.
    pub fn base(&self) -> &str {
        self.0.strip_prefix("/dev/").unwrap_or(&self.0)
    }
}

/// An EC2 tag: key 1–128 characters not starting with `aws:`, value up to 256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawTag")]
pub struct Tag {
    key: String,
    value: String,
}

#[derive(Deserialize)]
struct RawTag {
    key: String,
    value: String,
}

impl TryFrom<RawTag> for Tag {
    type Error = Error;
    fn try_from(raw: RawTag) -> Result<Self> {
        Tag::new(raw.key, raw.value)
    }
}

impl Tag {
    /// Checks EC2's limits on tag keys and values.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Result<Self> {
        let (key, value) = (key.into(), value.into());
        let key_len = key.chars().count();
        if !(1..=128).contains(&key_len) {
            return Err(Error::InvalidInput(
                format!("tag key must be 1 to 128 characters long, got {key_len}").into(),
            ));
        }
        for reserved in ["aws:", RESERVED_TAG_PREFIX] {
            if key.starts_with(reserved) {
                return Err(Error::InvalidInput(
                    format!("tag key {key:?} uses the reserved prefix {reserved}").into(),
                ));
            }
        }
        if value.chars().count() > 256 {
            return Err(Error::InvalidInput(
                format!("value of tag {key:?} is longer than 256 characters").into(),
            ));
        }
        check_text(&format!("tag key {key:?}"), &key)?;
        check_text(&format!("the value of tag {key:?}"), &value)?;
        Ok(Self { key, value })
    }

    /// The tag's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The tag's value.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl FromStr for Tag {
    type Err = Error;
    /// Parses `KEY=VALUE` (the value may be empty; the first `=` splits).
    fn from_str(s: &str) -> Result<Self> {
        let (key, value) = s.split_once('=').ok_or_else(|| {
            Error::InvalidInput(format!("tag {s:?} is not of the form KEY=VALUE").into())
        })?;
        Tag::new(key, value)
    }
}

/// Rejects a tag list with a repeated key.
pub fn check_unique_tag_keys(tags: &[Tag]) -> Result<()> {
    for (i, tag) in tags.iter().enumerate() {
        if tags[..i].iter().any(|t| t.key == tag.key) {
            return Err(Error::InvalidInput(
                format!("tag key {:?} is given twice", tag.key).into(),
            ));
        }
    }
    Ok(())
}

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $(
                #[doc = concat!("`", $wire, "`")]
                #[serde(rename = $wire)]
                $variant,
            )+
        }
        impl $name {
            /// The EC2 wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)+ }
            }
        }
        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    _ => Err(Error::InvalidInput(format!(
                        concat!("{:?} is not a valid ", stringify!($name), "; expected one of: {}"),
                        s, [$($wire),+].join(", ")
                    ).into())),
                }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

wire_enum!(
    /// CPU architecture of an AMI.
    Architecture { I386 => "i386", X86_64 => "x86_64", Arm64 => "arm64", X86_64Mac => "x86_64_mac", Arm64Mac => "arm64_mac" }
);
wire_enum!(
    /// Firmware boot mode of an AMI.
    BootMode { LegacyBios => "legacy-bios", Uefi => "uefi", UefiPreferred => "uefi-preferred" }
);
wire_enum!(
    /// Virtualisation type of an AMI.
    VirtualizationType { Hvm => "hvm", Paravirtual => "paravirtual" }
);
wire_enum!(
    /// EBS volume type.
    VolumeType { Standard => "standard", Io1 => "io1", Io2 => "io2", Gp2 => "gp2", Gp3 => "gp3", Sc1 => "sc1", St1 => "st1" }
);

/// The EBS part of a block device mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EbsMapping {
    /// Index into the manifest's disks of the snapshot this device is created from;
    /// `None` for a mapping that creates an empty volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<usize>,
    /// Volume size in GiB.
    pub volume_size_gib: u64,
    /// Volume type.
    pub volume_type: VolumeType,
    /// Provisioned IOPS (io1, io2, gp3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u32>,
    /// Throughput in MiB/s (gp3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<u32>,
    /// Whether the volume is deleted when the instance terminates.
    pub delete_on_termination: bool,
    /// Whether the source snapshot was encrypted.
    #[serde(default)]
    pub encrypted: bool,
    /// The KMS key (ARN) the source snapshot was encrypted under, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

impl EbsMapping {
    /// How a restore encrypts this disk's new snapshot: as its source was
    /// (the same key when it is known, else the account's default key).
    pub fn encryption(&self) -> Encryption {
        match (&self.kms_key_id, self.encrypted) {
            (Some(key), _) => Encryption::Key(key.clone()),
            (None, true) => Encryption::DefaultKey,
            (None, false) => Encryption::Unencrypted,
        }
    }
}

/// How a new snapshot is to be encrypted at rest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Encryption {
    /// Not asked for (an account that encrypts by default still does).
    #[default]
    Unencrypted,
    /// Under the account's default EBS key.
    DefaultKey,
    /// Under this KMS key (ARN); where the key cannot be used (another
    /// region), under the account's default key instead.
    Key(String),
}

/// One block device mapping of an AMI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockDeviceMapping {
    /// Device name, e.g. `/dev/xvda`.
    pub device_name: DeviceName,
    /// EBS volume settings, if this is an EBS mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs: Option<EbsMapping>,
    /// Instance-store virtual name (`ephemeral0`…), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_name: Option<String>,
    /// Suppresses a device the AMI would otherwise include.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_device: bool,
}

/// AMI metadata: the RegisterImage fields plus provenance and tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageMetadata {
    /// The AMI id the archive was made from, if it came from EC2 or a local library.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_image_id: Option<String>,
    /// The region the source image lived in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_region: Option<String>,
    /// Owner account of the source image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    /// When the source image was registered (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_date: Option<String>,
    /// AMI name.
    pub name: ImageName,
    /// AMI description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// CPU architecture.
    pub architecture: Architecture,
    /// Virtualisation type.
    pub virtualization_type: VirtualizationType,
    /// Root device name, e.g. `/dev/xvda`.
    pub root_device_name: DeviceName,
    /// Boot mode, if set on the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<BootMode>,
    /// ENA support.
    #[serde(default)]
    pub ena_support: bool,
    /// SR-IOV support (`simple`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov_net_support: Option<String>,
    /// NitroTPM support (`v2.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_support: Option<String>,
    /// IMDS support (`v2.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_support: Option<String>,
    /// UEFI variable store, base64 as EC2 returns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uefi_data: Option<String>,
    /// Kernel id (paravirtual images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_id: Option<String>,
    /// RAM disk id (paravirtual images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramdisk_id: Option<String>,
    /// Platform details EC2 reported (informational: RegisterImage cannot set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_details: Option<String>,
    /// Block device mappings, in the source's order.
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    /// Tags of the AMI.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// EBS's largest volume, GiB (64 TiB).
pub const MAX_VOLUME_GIB: u64 = 65_536;
/// Most provisioned IOPS of any EBS volume type (io2 Block Express).
pub const MAX_IOPS: u32 = 256_000;
/// Most throughput of any EBS volume type, MiB/s (gp3).
pub const MAX_THROUGHPUT: u32 = 2_000;
/// Longest UEFI variable store RegisterImage takes (base64 characters).
pub const MAX_UEFI_DATA: usize = 64_000;

impl ImageMetadata {
    /// Checks what RegisterImage and EC2's answers need of metadata that came
    /// from outside (a manifest, an import): the text, the tags, the bounds of
    /// every mapping. Names and device names are checked by their types.
    pub fn validate(&self) -> Result<()> {
        if let Some(d) = &self.description {
            check_description(d)?;
        }
        check_unique_tag_keys(&self.tags)?;
        for (what, value) in [
            ("the source image id", &self.source_image_id),
            ("the source region", &self.source_region),
            ("the owner id", &self.owner_id),
            ("the creation date", &self.creation_date),
            ("SR-IOV support", &self.sriov_net_support),
            ("TPM support", &self.tpm_support),
            ("IMDS support", &self.imds_support),
            ("the kernel id", &self.kernel_id),
            ("the RAM disk id", &self.ramdisk_id),
            ("the platform details", &self.platform_details),
        ] {
            if let Some(v) = value {
                if v.chars().count() > 255 {
                    return Err(Error::InvalidInput(
                        format!("{what} is longer than 255 characters").into(),
                    ));
                }
                check_text(what, v)?;
            }
        }
        if let Some(uefi) = &self.uefi_data {
            let base64 = uefi
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
            if uefi.len() > MAX_UEFI_DATA || !base64 {
                return Err(Error::InvalidInput(
                    format!("the UEFI data must be base64 of at most {MAX_UEFI_DATA} characters")
                        .into(),
                ));
            }
        }
        for m in &self.block_device_mappings {
            let Some(ebs) = &m.ebs else { continue };
            let device = m.device_name.as_str();
            if !(1..=MAX_VOLUME_GIB).contains(&ebs.volume_size_gib) {
                return Err(Error::InvalidInput(
                    format!(
                        "{device}: a volume of {} GiB is not 1 to {MAX_VOLUME_GIB} GiB",
                        ebs.volume_size_gib
                    )
                    .into(),
                ));
            }
            if ebs.iops.is_some_and(|i| i > MAX_IOPS) {
                return Err(Error::InvalidInput(
                    format!("{device}: more than {MAX_IOPS} IOPS").into(),
                ));
            }
            if ebs.throughput.is_some_and(|t| t > MAX_THROUGHPUT) {
                return Err(Error::InvalidInput(
                    format!("{device}: more than {MAX_THROUGHPUT} MiB/s of throughput").into(),
                ));
            }
            if let Some(key) = &ebs.kms_key_id {
                check_text(&format!("{device}'s KMS key"), key)?;
            }
        }
        for m in &self.block_device_mappings {
            if let Some(name) = &m.virtual_name {
                check_text("a virtual device name", name)?;
            }
        }
        Ok(())
    }

    /// Metadata with only what every image has: HVM, ENA on, and no optional
    /// attributes, mappings or tags (fill those in with struct-update syntax).
    pub fn minimal(
        name: ImageName,
        architecture: Architecture,
        root_device_name: DeviceName,
    ) -> Self {
        Self {
            source_image_id: None,
            source_region: None,
            owner_id: None,
            creation_date: None,
            name,
            description: None,
            architecture,
            virtualization_type: VirtualizationType::Hvm,
            root_device_name,
            boot_mode: None,
            ena_support: true,
            sriov_net_support: None,
            tpm_support: None,
            imds_support: None,
            uefi_data: None,
            kernel_id: None,
            ramdisk_id: None,
            platform_details: None,
            block_device_mappings: vec![],
            tags: vec![],
        }
    }
}

/// What a user says about an image made from raw disks (`archive pack`,
/// `image import`); the rest of the metadata follows from the disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// AMI name.
    pub name: ImageName,
    /// AMI description.
    pub description: Option<String>,
    /// CPU architecture.
    pub architecture: Architecture,
    /// Boot mode.
    pub boot_mode: Option<BootMode>,
    /// Root device; defaults to the first disk's device.
    pub root_device_name: Option<DeviceName>,
    /// AMI tags.
    pub tags: Vec<Tag>,
}

/// Bytes in a GiB (EBS volume sizes are whole GiB).
pub const GIB: u64 = 1 << 30;

impl ImageSpec {
    /// Full metadata for an image whose disks are `disks` (device, size in bytes),
    /// in order: each becomes a gp3 EBS mapping of the next whole GiB.
    pub fn to_metadata(&self, disks: &[(DeviceName, u64)]) -> Result<ImageMetadata> {
        if let Some(d) = &self.description {
            check_description(d)?;
        }
        check_unique_tag_keys(&self.tags)?;
        let (first, _) = disks
            .first()
            .ok_or_else(|| Error::InvalidInput("an image needs at least one disk".into()))?;
        let root = self
            .root_device_name
            .clone()
            .unwrap_or_else(|| first.clone());
        if !disks.iter().any(|(d, _)| *d == root) {
            return Err(Error::InvalidInput(
                format!(
                    "root device {root} is not one of the disks ({})",
                    disks
                        .iter()
                        .map(|(d, _)| d.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into(),
            ));
        }
        let block_device_mappings: Vec<BlockDeviceMapping> = disks
            .iter()
            .enumerate()
            .map(|(i, (device, size))| BlockDeviceMapping {
                device_name: device.clone(),
                ebs: Some(EbsMapping {
                    disk: Some(i),
                    volume_size_gib: size.div_ceil(GIB).max(1),
                    volume_type: VolumeType::Gp3,
                    iops: None,
                    throughput: None,
                    delete_on_termination: true,
                    encrypted: false,
                    kms_key_id: None,
                }),
                virtual_name: None,
                no_device: false,
            })
            .collect();
        let metadata = ImageMetadata {
            description: self.description.clone(),
            boot_mode: self.boot_mode,
            block_device_mappings,
            tags: self.tags.clone(),
            ..ImageMetadata::minimal(self.name.clone(), self.architecture, root)
        };
        metadata.validate()?;
        Ok(metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_follow_register_image_rules() {
        assert!("my-ami (v1.2) [x]/@'_".parse::<ImageName>().is_ok());
        assert!("ab".parse::<ImageName>().is_err());
        assert!("a".repeat(129).parse::<ImageName>().is_err());
        assert!("a".repeat(128).parse::<ImageName>().is_ok());
        let err = "bad*name".parse::<ImageName>().unwrap_err().to_string();
        assert!(err.contains("'*'"), "{err}");
    }

    #[test]
    fn device_names_and_tags_parse() {
        assert_eq!("/dev/xvda".parse::<DeviceName>().unwrap().base(), "xvda");
        assert!("/dev/sda1".parse::<DeviceName>().is_ok());
        for bad in ["/dev/", "/dev/../etc", "/dev/XVDA", "/dev/1a", "sd a"] {
            assert!(bad.parse::<DeviceName>().is_err(), "{bad}");
        }
        let tag: Tag = "Name=web=1".parse().unwrap();
        assert_eq!((tag.key(), tag.value()), ("Name", "web=1"));
        assert!("novalue".parse::<Tag>().is_err());
        assert!("aws:x=1".parse::<Tag>().is_err());
        assert!("=v".parse::<Tag>().is_err());
        assert!(check_unique_tag_keys(&["a=1".parse().unwrap(), "a=2".parse().unwrap()]).is_err());
    }

    #[test]
    fn image_spec_derives_mappings_from_disks() {
        let spec = ImageSpec {
            name: "from-disks".parse().unwrap(),
            description: Some("d".into()),
            architecture: Architecture::Arm64,
            boot_mode: Some(BootMode::Uefi),
            root_device_name: None,
            tags: vec!["a=1".parse().unwrap()],
        };
        let disks = [
            ("/dev/xvda".parse().unwrap(), 3 * GIB / 2),
            ("/dev/xvdb".parse().unwrap(), 512 * 1024),
        ];
        let m = spec.to_metadata(&disks).unwrap();
        assert_eq!(m.root_device_name.as_str(), "/dev/xvda");
        let sizes: Vec<_> = m
            .block_device_mappings
            .iter()
            .map(|b| b.ebs.as_ref().map(|e| (e.disk, e.volume_size_gib)))
            .collect();
        assert_eq!(sizes, vec![Some((Some(0), 2)), Some((Some(1), 1))]);

        let wrong_root = ImageSpec {
            root_device_name: Some("/dev/sdf".parse().unwrap()),
            ..spec.clone()
        };
        assert!(
            wrong_root
                .to_metadata(&disks)
                .unwrap_err()
                .to_string()
                .contains("/dev/sdf")
        );
        let long = ImageSpec {
            description: Some("x".repeat(256)),
            ..spec.clone()
        };
        assert!(long.to_metadata(&disks).is_err());
        let dup = ImageSpec {
            tags: vec!["a=1".parse().unwrap(), "a=2".parse().unwrap()],
            ..spec.clone()
        };
        assert!(dup.to_metadata(&disks).is_err());
        assert!(spec.to_metadata(&[]).is_err());
    }

    #[test]
    fn enums_use_wire_spelling() {
        assert_eq!(
            "uefi-preferred".parse::<BootMode>().unwrap(),
            BootMode::UefiPreferred
        );
        assert_eq!(
            serde_json::to_string(&Architecture::X86_64).unwrap(),
            "\"x86_64\""
        );
        let err = "amd64".parse::<Architecture>().unwrap_err().to_string();
        assert!(err.contains("x86_64") && err.contains("amd64"), "{err}");
    }
}
