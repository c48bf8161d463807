//! Who remote mode (`--endpoint`) signs as, and for which region.
//!
//! Built with the `aws` feature, the AWS SDK's default chain finds them, as the
//! AWS CLI does: the environment, then the shared `config` and `credentials`
//! files under `AWS_PROFILE` (static keys, `credential_process`, IAM Identity
//! Center, assumed roles), web identity, the container's and the instance's
//! roles. The default build carries no AWS SDK; it reads the environment,
//! then static keys of `AWS_PROFILE` (or `default`) in the shared credentials
//! file.

use amistore_api::client::ClientCredentials;
use anyhow::Result;

/// The region when the configuration names none, as the AWS CLI's default.
const DEFAULT_REGION: &str = "us-east-1";

/// The credentials to sign with and the region to sign for.
pub fn caller() -> Result<(ClientCredentials, String)> {
    let (credentials, region) = found()?;
    Ok((
        credentials,
        region.unwrap_or_else(|| DEFAULT_REGION.to_owned()),
    ))
}

#[cfg(feature = "aws")]
fn found() -> Result<(ClientCredentials, Option<String>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let caller = runtime.block_on(amistore_aws::caller_credentials())?;
    Ok((
        ClientCredentials {
            access_key: caller.access_key_id,
            secret: caller.secret_access_key,
            session_token: caller.session_token,
        },
        caller.region,
    ))
}

#[cfg(not(feature = "aws"))]
fn found() -> Result<(ClientCredentials, Option<String>)> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let credentials = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key), Some(secret)) => ClientCredentials {
            access_key,
            secret,
            session_token: env("AWS_SESSION_TOKEN"),
        },
        _ => {
            let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
            from_credentials_file(&profile).ok_or_else(|| {
                anyhow::anyhow!(
                    "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
                     static keys for profile {profile:?} in ~/.aws/credentials (profiles with \
                     credential_process, SSO or roles need a build with --features aws)"
                )
            })?
        }
    };
    Ok((
        credentials,
        env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
    ))
}

/// Static keys of `profile` in the shared credentials file
/// (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`). Hand-read: the
/// default build carries no AWS SDK, and this is the one part of the format it
/// needs (sections, `key = value`, `#` and `;` comments).
#[cfg(not(feature = "aws"))]
fn from_credentials_file(profile: &str) -> Option<ClientCredentials> {
    /// Larger than any credentials file; no more of one is read.
    const MAX_BYTES: u64 = 1024 * 1024;
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".aws/credentials")))?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(std::fs::File::open(path).ok()?, MAX_BYTES),
        &mut text,
    )
    .ok()?;
    let mut in_profile = false;
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
        } else if in_profile && let Some((k, v)) = line.split_once('=') {
            let v = Some(v.trim().to_owned());
            match k.trim() {
                "aws_access_key_id" => key = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v,
                _ => {}
            }
        }
    }
    Some(ClientCredentials {
        access_key: key?,
        secret: secret?,
        session_token: token,
    })
}
