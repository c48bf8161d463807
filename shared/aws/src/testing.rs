//! Tests against moto's server (the test command's, or one this process
//! starts from the repository's `.venv`): the adapters pointed at it, and a
//! plain S3 client for setting up buckets. Compiled with the `testing` feature.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{AwsPorts, AwsSettings, Overrides};
use amistore_core::ids::unique_token;

/// The moto endpoint: `AMISTORE_MOTO_ENDPOINT` (scripts/test starts one), or a
/// server this process starts from the repository's .venv and that exits with it.
pub fn moto_endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        if let Ok(url) = std::env::var("AMISTORE_MOTO_ENDPOINT") {
            return url;
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = root.join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/test (it installs moto), or set AMISTORE_MOTO_ENDPOINT",
            python.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Never waited for: it exits with this process (its parent-pid watch).
        #[allow(clippy::zombie_processes)]
        Command::new(python)
            .arg(root.join("tests/moto/amistore_moto.py"))
            .arg(port.to_string())
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        format!("http://127.0.0.1:{port}")
    })
}

/// Settings for a fresh table and work bucket on moto, in `region` (moto keeps
/// EC2 and EBS state per region: a test that lists every image of the account
/// takes a region of its own).
pub fn settings(region: &str) -> AwsSettings {
    let token = &unique_token()[..12];
    let mut s = AwsSettings::new(
        format!("amistore-{token}"),
        format!("work-{token}").parse().unwrap(),
    );
    s.overrides = Overrides {
        endpoint_url: Some(moto_endpoint().to_owned()),
        region: Some(region.into()),
        credentials: Some(("testing".into(), "testing".into())),
        audit: None,
    };
    s
}

/// A runtime and the adapters over moto.
pub struct Aws {
    pub runtime: tokio::runtime::Runtime,
    pub ports: AwsPorts,
    pub settings: AwsSettings,
    pub s3: aws_sdk_s3::Client,
    pub sfn: aws_sdk_sfn::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
}

/// One disk of an image seeded through the EBS direct APIs: its size, and the
/// blocks written (index, data).
pub struct SeedDisk {
    pub device: &'static str,
    pub bytes: u64,
    pub blocks: Vec<(u64, Vec<u8>)>,
}

impl Aws {
    pub fn connect() -> Self {
        Self::connect_in("us-east-1")
    }

    pub fn connect_in(region: &str) -> Self {
        let settings = settings(region);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ports = runtime
            .block_on(AwsPorts::connect(&settings, runtime.handle().clone()))
            .unwrap();
        let config = runtime.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .endpoint_url(moto_endpoint())
                .region(aws_config::Region::new(region.to_owned()))
                .credentials_provider(aws_sdk_s3::config::Credentials::new(
                    "testing", "testing", None, None, "test",
                ))
                .load(),
        );
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(true)
                .build(),
        );
        Self {
            runtime,
            ports,
            settings,
            s3,
            sfn: aws_sdk_sfn::Client::new(&config),
            secrets: aws_sdk_secretsmanager::Client::new(&config),
        }
    }

    /// The region of this world.
    pub fn region(&self) -> String {
        self.settings.overrides.region.clone().unwrap_or_default()
    }

    /// Seeds an `available` image over new snapshots written through the EBS
    /// direct APIs (StartSnapshot, PutSnapshotBlock, CompleteSnapshot), then
    /// RegisterImage. Returns it and its snapshots.
    pub fn seed_image(
        &self,
        name: &str,
        disks: &[SeedDisk],
        encryption: &amistore_core::image::Encryption,
        tags: &[&str],
    ) -> (
        amistore_core::ids::ImageId,
        Vec<amistore_core::ids::SnapshotId>,
    ) {
        use amistore_core::image::{
            Architecture, BlockDeviceMapping, EbsMapping, GIB, ImageMetadata, VolumeType,
        };
        use amistore_core::ports::{ImageCatalog, SnapshotStore};
        let images = self.ports.images.as_ref();
        let account = &self.ports.account;
        let mut snapshots = Vec::new();
        for (i, disk) in disks.iter().enumerate() {
            let snap = images
                .start_snapshot(
                    account,
                    disk.bytes,
                    &[format!("disk=d{i}").parse().unwrap()],
                    encryption,
                    &format!("seed-{name}-{i}"),
                )
                .unwrap();
            for (index, data) in &disk.blocks {
                images.write_blocks(&snap, *index, data).unwrap();
            }
            images
                .complete_snapshot(&snap, disk.blocks.len() as u64)
                .unwrap();
            snapshots.push(snap);
        }
        let metadata = ImageMetadata {
            description: Some(format!("{name}, seeded through the EBS direct APIs")),
            block_device_mappings: disks
                .iter()
                .enumerate()
                .map(|(i, d)| BlockDeviceMapping {
                    device_name: d.device.parse().unwrap(),
                    ebs: Some(EbsMapping {
                        disk: Some(i),
                        volume_size_gib: d.bytes.div_ceil(GIB),
                        volume_type: VolumeType::Gp3,
                        iops: Some(3000),
                        throughput: Some(125),
                        delete_on_termination: true,
                        encrypted: false,
                        kms_key_id: None,
                    }),
                    virtual_name: None,
                    no_device: false,
                })
                .collect(),
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
            ..ImageMetadata::minimal(
                name.parse().unwrap(),
                Architecture::X86_64,
                "/dev/xvda".parse().unwrap(),
            )
        };
        let image = images
            .register_image(account, &metadata, &snapshots, &format!("seed-{name}"))
            .unwrap();
        images
            .set_image_state(
                account,
                &image,
                amistore_core::ids::ResourceState::Available,
                None,
            )
            .unwrap();
        (image, snapshots)
    }

    /// A Secrets Manager secret holding `value`; returns its ARN.
    pub fn create_secret(&self, name: &str, value: &str) -> String {
        self.runtime
            .block_on(
                self.secrets
                    .create_secret()
                    .name(name)
                    .secret_string(value)
                    .send(),
            )
            .unwrap()
            .arn
            .unwrap()
    }

    /// A state machine (moto records executions; it runs none); returns its ARN.
    pub fn create_state_machine(&self, name: &str, definition: &str) -> String {
        let role = format!("arn:aws:iam::{}:role/{name}-role", self.ports.account);
        self.runtime
            .block_on(
                self.sfn
                    .create_state_machine()
                    .name(name)
                    .definition(definition)
                    .role_arn(role)
                    .send(),
            )
            .unwrap()
            .state_machine_arn
    }

    /// Ends an execution (as a finished, stopped or timed-out one would be).
    pub fn end_execution(&self, arn: &str) {
        self.runtime
            .block_on(self.sfn.stop_execution().execution_arn(arn).send())
            .unwrap();
    }

    /// Creates a bucket on moto, in this world's region.
    pub fn create_bucket(&self, name: &str) {
        let region = self.settings.overrides.region.clone().unwrap_or_default();
        let mut call = self.s3.create_bucket().bucket(name);
        if region != "us-east-1" {
            call = call.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        region.as_str(),
                    ))
                    .build(),
            );
        }
        self.runtime.block_on(call.send()).unwrap();
    }

    /// The whole object.
    pub fn get_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.runtime.block_on(async {
            let out = self
                .s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            out.body.collect().await.unwrap().to_vec()
        })
    }
}
