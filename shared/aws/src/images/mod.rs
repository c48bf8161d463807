//! EC2 and the EBS direct APIs as the engine's image catalog and snapshot
//! store, for the deployment's own account: one adapter, [`Ec2Images`],
//! serving two ports.
//!
//! - [`catalog`] is the [`ImageCatalog`](amistore_core::ports::ImageCatalog),
//!   over EC2 (images, snapshots, tags, image attributes);
//! - [`snapshot_store`] is the [`SnapshotStore`](amistore_core::ports::SnapshotStore),
//!   over the EBS direct APIs, with EC2 for what they do not do (describe,
//!   delete, tags);
//! - [`ebs_requests`] is how block requests are paced, read ahead and written
//!   behind; it knows nothing of the adapter.
//!
//! This file holds the adapter and the EC2 calls both ports use.
//!
//! EC2 keeps no state amistore could set directly, so a few tags (prefix
//! `amistore:`, never shown as the user's tags) carry what the ports need:
//! - `amistore:client-token`: the token an image was registered or a snapshot
//!   started with (RegisterImage has no ClientToken; StartSnapshot's is also sent);
//! - `amistore:state` / `amistore:state-reason`: a restore's `pending` or
//!   `failed` verdict on its image and snapshots, until it makes them available;
//! - `amistore:volume-bytes`: a snapshot's exact size when it is not a whole
//!   number of GiB (EBS sizes are GiB; a locally imported disk may not be).

pub mod catalog;
pub mod ebs_requests;
pub mod snapshot_store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use amistore_core::ids::{AccountId, ImageId, ResourceState, SnapshotId};
use amistore_core::image::{
    BlockDeviceMapping, DeviceName, EbsMapping, GIB, ImageMetadata, ImageName, Tag,
};
use amistore_core::ports::{Image, Snapshot};
use amistore_core::{Error, Result};
use aws_sdk_ebs::Client as EbsClient;
use aws_sdk_ec2::Client as Ec2Client;
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping as Ec2Mapping, BootModeValues, EbsBlockDevice, Filter,
    ImageAttributeName, ImdsSupportValues, ResourceType, Tag as Ec2Tag, TagSpecification,
    TpmSupportValues, VolumeType as Ec2VolumeType,
};

use crate::bridge::Bridge;
use crate::error::sdk;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use ebs_requests::{EbsLimits, Pacer, ReadAhead, TokenWindow, WritesBehind};

/// Tag holding the token an image or snapshot was created with.
pub const TOKEN_TAG: &str = "amistore:client-token";
/// Tag holding a restore's verdict on its image and snapshots.
pub const STATE_TAG: &str = "amistore:state";
/// Tag holding why a restore failed.
pub const REASON_TAG: &str = "amistore:state-reason";
/// Tag holding a snapshot's exact size in bytes when not whole GiB.
pub const VOLUME_BYTES_TAG: &str = "amistore:volume-bytes";
const RESERVED_PREFIX: &str = "amistore:";

/// EC2 and the EBS direct APIs as the engine's image catalog and snapshot store.
#[derive(Clone, Debug)]
pub struct Ec2Images {
    pub(crate) ec2: Ec2Client,
    pub(crate) ebs: EbsClient,
    pub(crate) bridge: Bridge,
    pub(crate) account: AccountId,
    /// The region the clients act in (where a KMS key can be used).
    pub(crate) region: Option<String>,
    pub(crate) limits: EbsLimits,
    pub(crate) pacer: Arc<Pacer>,
    /// Block tokens from ListSnapshotBlocks, per snapshot (see [`snapshot_store`]).
    pub(crate) tokens: Arc<Mutex<HashMap<SnapshotId, TokenWindow>>>,
    /// Volume sizes in bytes, per snapshot, as learnt.
    pub(crate) sizes: Arc<Mutex<HashMap<SnapshotId, u64>>>,
    /// Block reads started ahead of the reader, per snapshot.
    pub(crate) ahead: Arc<Mutex<HashMap<SnapshotId, ReadAhead>>>,
    /// Block writes in flight, per snapshot.
    pub(crate) behind: Arc<Mutex<HashMap<SnapshotId, WritesBehind>>>,
}

/// A snapshot as EC2 describes it.
pub(crate) struct SnapshotFacts {
    pub volume_bytes: u64,
    pub state: ResourceState,
    pub tags: Vec<Tag>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub start_time: Option<String>,
}

fn ec2_tag(key: &str, value: &str) -> Ec2Tag {
    Ec2Tag::builder().key(key).value(value).build()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// The user's tags (reserved ones left out) and the reserved ones by key.
fn split_tags<'a>(
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(Vec<Tag>, HashMap<String, String>)> {
    let mut user = Vec::new();
    let mut reserved = HashMap::new();
    for (k, v) in tags {
        if k.starts_with(RESERVED_PREFIX) {
            reserved.insert(k.to_owned(), v.to_owned());
        } else if !k.starts_with("aws:") {
            user.push(Tag::new(k, v)?);
        }
    }
    user.sort_by(|a, b| a.key().cmp(b.key()));
    Ok((user, reserved))
}

fn state_from_tag(reserved: &HashMap<String, String>) -> Option<ResourceState> {
    match reserved.get(STATE_TAG).map(String::as_str) {
        Some("pending") => Some(ResourceState::Pending),
        Some("failed") => Some(ResourceState::Failed),
        _ => None,
    }
}

impl Ec2Images {
    /// A catalog of `account`'s images (the account the clients act as).
    pub fn new(
        ec2: Ec2Client,
        ebs: EbsClient,
        bridge: Bridge,
        account: AccountId,
        limits: EbsLimits,
    ) -> Self {
        let region = ec2.config().region().map(|r| r.to_string());
        Self {
            ec2,
            ebs,
            bridge,
            account,
            region,
            pacer: Arc::new(Pacer::new(limits.requests_per_second)),
            limits,
            tokens: Arc::default(),
            sizes: Arc::default(),
            ahead: Arc::default(),
            behind: Arc::default(),
        }
    }

    /// Whether `account` is the one these clients act as: other accounts' images
    /// and snapshots are never there for them.
    fn ours(&self, account: &AccountId) -> bool {
        *account == self.account
    }

    pub(crate) fn describe_snapshots(
        &self,
        ids: &[&SnapshotId],
    ) -> Result<HashMap<SnapshotId, SnapshotFacts>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let call = self
            .ec2
            .describe_snapshots()
            .set_snapshot_ids(Some(ids.iter().map(|s| s.to_string()).collect()))
            .owner_ids(self.account.as_str())
            .send();
        let out = match self.bridge.run(call) {
            Ok(out) => out,
            Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => {
                return Err(Error::NotFound(
                    format!(
                        "snapshot {} does not exist",
                        ids.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                    .into(),
                ));
            }
            Err(e) => return Err(sdk("describing snapshots", e)),
        };
        let mut facts = HashMap::new();
        for snap in out.snapshots() {
            let Some(id) = snap
                .snapshot_id()
                .and_then(|s| s.parse::<SnapshotId>().ok())
            else {
                continue;
            };
            let (tags, reserved) = split_tags(
                snap.tags()
                    .iter()
                    .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))),
            )?;
            let volume_bytes = reserved
                .get(VOLUME_BYTES_TAG)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| snap.volume_size().unwrap_or(0).max(0) as u64 * GIB);
            let state =
                state_from_tag(&reserved).unwrap_or(match snap.state().map(|s| s.as_str()) {
                    Some("pending") => ResourceState::Pending,
                    Some("error") => ResourceState::Failed,
                    _ => ResourceState::Available,
                });
            self.sizes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), volume_bytes);
            facts.insert(
                id,
                SnapshotFacts {
                    volume_bytes,
                    state,
                    tags,
                    encrypted: snap.encrypted().unwrap_or(false),
                    kms_key_id: snap.kms_key_id().map(str::to_owned),
                    start_time: snap.start_time().map(|t| t.to_string()),
                },
            );
        }
        if let Some(missing) = ids.iter().find(|id| !facts.contains_key(**id)) {
            return Err(Error::NotFound(
                format!("snapshot {missing} does not exist").into(),
            ));
        }
        Ok(facts)
    }

    /// One snapshot's facts.
    pub(crate) fn snapshot_facts(&self, id: &SnapshotId) -> Result<SnapshotFacts> {
        self.describe_snapshots(&[id])?
            .remove(id)
            .ok_or_else(|| Error::NotFound(format!("snapshot {id} does not exist").into()))
    }

    /// Images owned by the account, matching `filters`.
    fn images_where(&self, filters: Vec<Filter>) -> Result<Vec<Image>> {
        let call = self
            .ec2
            .describe_images()
            .owners(self.account.as_str())
            .set_filters(Some(filters))
            .send();
        let out = self
            .bridge
            .run(call)
            .map_err(|e| sdk("describing images", e))?;
        let mut images = out
            .images()
            .iter()
            .map(|i| self.image_from(i))
            .collect::<Result<Vec<_>>>()?;
        images.sort_by(|a, b| a.creation_date.cmp(&b.creation_date));
        Ok(images)
    }

    fn image_from(&self, image: &aws_sdk_ec2::types::Image) -> Result<Image> {
        let id: ImageId = image.image_id().unwrap_or_default().parse()?;
        let bad =
            |what: &str| Error::InvalidInput(format!("image {id} has no valid {what}").into());
        let (tags, reserved) = split_tags(
            image
                .tags()
                .iter()
                .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))),
        )?;
        let mut snapshot_ids = Vec::new();
        let mut mappings = Vec::new();
        for m in image.block_device_mappings() {
            let device_name: DeviceName = m.device_name().unwrap_or_default().parse()?;
            let ebs = match m.ebs() {
                Some(ebs) => {
                    let disk = match ebs.snapshot_id() {
                        Some(snap) => {
                            snapshot_ids.push((snap.parse::<SnapshotId>()?, device_name.clone()));
                            Some(snapshot_ids.len() - 1)
                        }
                        None => None,
                    };
                    Some(EbsMapping {
                        disk,
                        volume_size_gib: ebs.volume_size().unwrap_or(0).max(0) as u64,
                        volume_type: ebs
                            .volume_type()
                            .map_or(Ok(amistore_core::image::VolumeType::Gp2), |t| {
                                t.as_str().parse()
                            })?,
                        iops: ebs.iops().map(|v| v.max(0) as u32),
                        throughput: ebs.throughput().map(|v| v.max(0) as u32),
                        delete_on_termination: ebs.delete_on_termination().unwrap_or(true),
                        encrypted: ebs.encrypted().unwrap_or(false),
                        // From the snapshot, below: an AMI's mapping does not say.
                        kms_key_id: None,
                    })
                }
                None => None,
            };
            mappings.push(BlockDeviceMapping {
                device_name,
                ebs,
                virtual_name: m.virtual_name().map(str::to_owned),
                no_device: m.no_device().is_some(),
            });
        }
        let facts =
            self.describe_snapshots(&snapshot_ids.iter().map(|(s, _)| s).collect::<Vec<_>>())?;
        // How each disk is encrypted is the snapshot's to say: kept so a
        // restore encrypts the same way.
        for ebs in mappings.iter_mut().filter_map(|m| m.ebs.as_mut()) {
            if let Some((snapshot, _)) = ebs.disk.and_then(|d| snapshot_ids.get(d)) {
                let f = &facts[snapshot];
                ebs.encrypted |= f.encrypted;
                ebs.kms_key_id = f.kms_key_id.clone();
            }
        }
        let tagged_state = state_from_tag(&reserved);
        let snapshots = snapshot_ids
            .into_iter()
            .map(|(snapshot_id, device_name)| {
                let f = &facts[&snapshot_id];
                Snapshot {
                    volume_size: f.volume_bytes,
                    state: tagged_state.unwrap_or(f.state),
                    tags: f.tags.clone(),
                    snapshot_id,
                    device_name,
                }
            })
            .collect();
        let boot_mode = image.boot_mode().map(|b| b.as_str().parse()).transpose()?;
        let uefi_data = match boot_mode {
            Some(amistore_core::image::BootMode::LegacyBios) | None => None,
            Some(_) => self.uefi_data(&id)?,
        };
        let state = tagged_state.unwrap_or(match image.state().map(|s| s.as_str()) {
            Some("pending") => ResourceState::Pending,
            Some("available") => ResourceState::Available,
            _ => ResourceState::Failed,
        });
        let name: ImageName = image.name().unwrap_or_default().parse()?;
        let metadata = ImageMetadata {
            source_image_id: image.source_image_id().map(str::to_owned),
            source_region: image.source_image_region().map(str::to_owned),
            owner_id: image.owner_id().map(str::to_owned),
            creation_date: image.creation_date().map(str::to_owned),
            description: image
                .description()
                .map(str::to_owned)
                .filter(|d| !d.is_empty()),
            architecture: image
                .architecture()
                .ok_or_else(|| bad("architecture"))?
                .as_str()
                .parse()?,
            virtualization_type: image
                .virtualization_type()
                .map_or("hvm", |v| v.as_str())
                .parse()?,
            root_device_name: image
                .root_device_name()
                .ok_or_else(|| bad("root device name"))?
                .parse()?,
            boot_mode,
            ena_support: image.ena_support().unwrap_or(false),
            sriov_net_support: image.sriov_net_support().map(str::to_owned),
            tpm_support: image.tpm_support().map(|v| v.as_str().to_owned()),
            imds_support: image.imds_support().map(|v| v.as_str().to_owned()),
            uefi_data,
            kernel_id: image.kernel_id().map(str::to_owned),
            ramdisk_id: image.ramdisk_id().map(str::to_owned),
            platform_details: image.platform_details().map(str::to_owned),
            block_device_mappings: mappings,
            tags,
            name,
        };
        Ok(Image {
            owner_id: image.owner_id().unwrap_or_default().parse()?,
            state,
            state_reason: reserved.get(REASON_TAG).cloned().or_else(|| {
                (state == ResourceState::Failed)
                    .then(|| {
                        image
                            .state_reason()
                            .and_then(|r| r.message())
                            .map(str::to_owned)
                    })
                    .flatten()
            }),
            creation_date: image.creation_date().unwrap_or_default().to_owned(),
            client_token: reserved.get(TOKEN_TAG).cloned(),
            image_id: id,
            metadata,
            snapshots,
        })
    }

    /// The image's UEFI variable store (DescribeImageAttribute uefiData).
    fn uefi_data(&self, id: &ImageId) -> Result<Option<String>> {
        let call = self
            .ec2
            .describe_image_attribute()
            .image_id(id.as_str())
            .attribute(ImageAttributeName::UefiData)
            .send();
        let out = self
            .bridge
            .run(call)
            .map_err(|e| sdk(format_args!("reading the UEFI data of {id}"), e))?;
        Ok(out
            .uefi_data()
            .and_then(|v| v.value())
            .filter(|v| !v.is_empty())
            .map(str::to_owned))
    }

    /// Tags `resources` with `tags`.
    pub(crate) fn tag(&self, resources: Vec<String>, tags: Vec<Ec2Tag>) -> Result<()> {
        let call = self
            .ec2
            .create_tags()
            .set_resources(Some(resources))
            .set_tags(Some(tags))
            .send();
        self.bridge
            .run(call)
            .map(|_| ())
            .map_err(|e| sdk("tagging", e))
    }

    fn untag(&self, resources: Vec<String>, keys: &[&str]) -> Result<()> {
        let call = self
            .ec2
            .delete_tags()
            .set_resources(Some(resources))
            .set_tags(Some(
                keys.iter()
                    .map(|k| Ec2Tag::builder().key(*k).build())
                    .collect(),
            ))
            .send();
        self.bridge
            .run(call)
            .map(|_| ())
            .map_err(|e| sdk("removing tags", e))
    }

    /// The RegisterImage request for `metadata` over `snapshots`.
    pub(crate) fn register_request(
        &self,
        metadata: &ImageMetadata,
        snapshots: &[SnapshotId],
        client_token: &str,
    ) -> Result<aws_sdk_ec2::operation::register_image::builders::RegisterImageFluentBuilder> {
        let mut mappings = Vec::new();
        for m in &metadata.block_device_mappings {
            let ebs = match &m.ebs {
                Some(e) => {
                    let snapshot = match e.disk {
                        Some(d) => Some(
                            snapshots
                                .get(d)
                                .ok_or_else(|| {
                                    Error::InvalidInput(format!(
                                        "mapping {} names disk {d}, but the image has {} snapshots",
                                        m.device_name,
                                        snapshots.len()
                                    ).into())
                                })?
                                .to_string(),
                        ),
                        None => None,
                    };
                    // Encrypted is left out: RegisterImage refuses it with a
                    // snapshot (the snapshot's own encryption applies).
                    Some(
                        EbsBlockDevice::builder()
                            .set_snapshot_id(snapshot)
                            .volume_size(i32::try_from(e.volume_size_gib).map_err(|_| {
                                Error::InvalidInput(
                                    format!(
                                        "{}: a volume of {} GiB is too large",
                                        m.device_name, e.volume_size_gib
                                    )
                                    .into(),
                                )
                            })?)
                            .volume_type(Ec2VolumeType::from(e.volume_type.as_str()))
                            .set_iops(e.iops.map(|v| v as i32))
                            .set_throughput(e.throughput.map(|v| v as i32))
                            .delete_on_termination(e.delete_on_termination)
                            .build(),
                    )
                }
                None => None,
            };
            mappings.push(
                Ec2Mapping::builder()
                    .device_name(m.device_name.as_str())
                    .set_ebs(ebs)
                    .set_virtual_name(m.virtual_name.clone())
                    .set_no_device(m.no_device.then(String::new))
                    .build(),
            );
        }
        let mut tags: Vec<Ec2Tag> = metadata
            .tags
            .iter()
            .map(|t| ec2_tag(t.key(), t.value()))
            .collect();
        tags.push(ec2_tag(TOKEN_TAG, client_token));
        tags.push(ec2_tag(STATE_TAG, "pending"));
        Ok(self
            .ec2
            .register_image()
            .name(metadata.name.as_str())
            .set_description(metadata.description.clone())
            .architecture(ArchitectureValues::from(metadata.architecture.as_str()))
            .virtualization_type(metadata.virtualization_type.as_str())
            .root_device_name(metadata.root_device_name.as_str())
            .set_block_device_mappings(Some(mappings))
            .ena_support(metadata.ena_support)
            .set_sriov_net_support(metadata.sriov_net_support.clone())
            .set_boot_mode(metadata.boot_mode.map(|b| BootModeValues::from(b.as_str())))
            .set_tpm_support(metadata.tpm_support.as_deref().map(TpmSupportValues::from))
            .set_uefi_data(metadata.uefi_data.clone())
            .set_imds_support(
                metadata
                    .imds_support
                    .as_deref()
                    .map(ImdsSupportValues::from),
            )
            .set_kernel_id(metadata.kernel_id.clone())
            .set_ramdisk_id(metadata.ramdisk_id.clone())
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Image)
                    .set_tags(Some(tags))
                    .build(),
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_tags_are_kept_apart_from_the_users() {
        let (user, reserved) = split_tags([
            ("Name", "web"),
            (STATE_TAG, "failed"),
            ("aws:cloudformation:stack-name", "s"),
            ("env", "prod"),
        ])
        .unwrap();
        assert_eq!(
            user,
            vec![
                Tag::new("Name", "web").unwrap(),
                Tag::new("env", "prod").unwrap()
            ]
        );
        assert_eq!(state_from_tag(&reserved), Some(ResourceState::Failed));
        assert_eq!(state_from_tag(&HashMap::new()), None);
    }
}
