//! [`ImageCatalog`] over EC2: DescribeImages and DescribeSnapshots (scoped to
//! the account), RegisterImage with the archive's attributes, DeregisterImage
//! and DeleteSnapshot, and the `amistore:` tags that carry a restore's state
//! and client token.

use amistore_core::ids::{AccountId, ImageId, ResourceState, SnapshotId};
use amistore_core::image::{ImageMetadata, ImageName};
use amistore_core::ports::{Image, ImageCatalog};
use amistore_core::{Error, Result};

use super::{Ec2Images, REASON_TAG, STATE_TAG, TOKEN_TAG, ec2_tag, filter};
use crate::error::sdk;
use aws_sdk_ec2::error::ProvideErrorMetadata;

impl ImageCatalog for Ec2Images {
    fn describe_image(&self, account: &AccountId, id: &ImageId) -> Result<Image> {
        let missing = || Error::NotFound(format!("image {id} does not exist").into());
        if !self.ours(account) {
            return Err(missing());
        }
        let call = self.ec2.describe_images().image_ids(id.as_str()).send();
        let out = match self.bridge.run(call) {
            Ok(out) => out,
            Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidAMIID")) => {
                return Err(missing());
            }
            Err(e) => return Err(sdk(format_args!("describing image {id}"), e)),
        };
        let image = out.images().first().ok_or_else(missing)?;
        if image.owner_id() != Some(account.as_str()) {
            return Err(missing());
        }
        self.image_from(image)
    }

    fn list_images(&self, account: &AccountId) -> Result<Vec<Image>> {
        if !self.ours(account) {
            return Ok(Vec::new());
        }
        self.images_where(Vec::new())
    }

    fn image_name_taken(&self, account: &AccountId, name: &ImageName) -> Result<bool> {
        if !self.ours(account) {
            return Ok(false);
        }
        let call = self
            .ec2
            .describe_images()
            .owners(self.account.as_str())
            .filters(filter("name", name.as_str()))
            .send();
        let out = self
            .bridge
            .run(call)
            .map_err(|e| sdk("looking up an image name", e))?;
        Ok(out.images().iter().any(|i| i.name() == Some(name.as_str())))
    }

    fn register_image(
        &self,
        account: &AccountId,
        metadata: &ImageMetadata,
        snapshots: &[SnapshotId],
        client_token: &str,
    ) -> Result<ImageId> {
        if !self.ours(account) {
            return Err(Error::InvalidInput(
                format!("images can only be registered in account {}", self.account).into(),
            ));
        }
        if let Some(image) = self.find_image_by_token(account, client_token)? {
            return Ok(image.image_id);
        }
        if self.image_name_taken(account, &metadata.name)? {
            return Err(Error::AlreadyExists(
                format!(
                    "an image called {:?} already exists",
                    metadata.name.as_str()
                )
                .into(),
            ));
        }
        let call = self
            .register_request(metadata, snapshots, client_token)?
            .send();
        let out = match self.bridge.run(call) {
            Ok(out) => out,
            Err(e) if e.code() == Some("InvalidAMIName.Duplicate") => {
                return Err(Error::AlreadyExists(
                    format!(
                        "an image called {:?} already exists",
                        metadata.name.as_str()
                    )
                    .into(),
                ));
            }
            Err(e) => return Err(sdk(format_args!("registering {}", metadata.name), e)),
        };
        let id: ImageId = out
            .image_id()
            .ok_or_else(|| Error::Transient("RegisterImage returned no image id".into()))?
            .parse()?;
        // The snapshots share the image's pending verdict until the restore ends.
        self.tag(
            snapshots.iter().map(|s| s.to_string()).collect(),
            vec![ec2_tag(STATE_TAG, "pending")],
        )?;
        Ok(id)
    }

    fn find_image_by_token(
        &self,
        account: &AccountId,
        client_token: &str,
    ) -> Result<Option<Image>> {
        if !self.ours(account) {
            return Ok(None);
        }
        Ok(self
            .images_where(vec![filter(&format!("tag:{TOKEN_TAG}"), client_token)])?
            .into_iter()
            .next())
    }

    fn deregister_image(&self, account: &AccountId, id: &ImageId) -> Result<()> {
        let image = self.describe_image(account, id)?;
        if image.state == ResourceState::Pending {
            return Err(Error::IncorrectState(
                format!("image {id} is still being restored; cancel or wait for the restore first")
                    .into(),
            ));
        }
        let call = self.ec2.deregister_image().image_id(id.as_str()).send();
        self.bridge
            .run(call)
            .map_err(|e| sdk(format_args!("deregistering {id}"), e))?;
        for snapshot in &image.snapshots {
            let call = self
                .ec2
                .delete_snapshot()
                .snapshot_id(snapshot.snapshot_id.as_str())
                .send();
            match self.bridge.run(call) {
                Ok(_) => {}
                Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => {}
                Err(e) => {
                    return Err(sdk(
                        format_args!("deleting snapshot {}", snapshot.snapshot_id),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    fn set_image_state(
        &self,
        account: &AccountId,
        id: &ImageId,
        state: ResourceState,
        reason: Option<&str>,
    ) -> Result<()> {
        let image = self.describe_image(account, id)?;
        let mut resources = vec![id.to_string()];
        resources.extend(image.snapshots.iter().map(|s| s.snapshot_id.to_string()));
        match state {
            ResourceState::Available => self.untag(resources, &[STATE_TAG, REASON_TAG]),
            ResourceState::Pending | ResourceState::Failed => {
                let mut tags = vec![ec2_tag(STATE_TAG, state.as_str())];
                if let Some(reason) = reason {
                    // EC2 tag values hold 256 characters.
                    let short: String = reason.chars().take(256).collect();
                    tags.push(ec2_tag(REASON_TAG, &short));
                }
                self.tag(resources, tags)
            }
        }
    }
}
