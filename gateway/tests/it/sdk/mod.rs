//! The Rust AWS SDK (`aws-sdk-s3`) against real gateways over a real cluster: every
//! operation the gateway serves, with the SDK's defaults (flexible checksums sent as
//! aws-chunked trailers, SigV4 in headers) and presigned URLs fetched over plain HTTP.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, EncodingType, MetadataDirective,
    ObjectIdentifier,
};
use aws_sdk_s3::Client;
use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use md5::{Digest, Md5};
use shale_gateway::{Gateway, GatewayConfig};
use shale_storage::cluster::LocalCluster;

const ACCESS: &str = "sdk-access";
const SECRET: &str = "sdk-secret-key";

/// A 3-store cluster with gateways in front, and an SDK client of the first.
struct Harness {
    cluster: LocalCluster,
    gateways: Vec<Gateway>,
    s3: Client,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(gateways: usize) -> Harness {
        Harness::start_with(gateways, |_| {}).await
    }

    /// As `start`, with the gateways' config changed by `tweak`.
    async fn start_with(gateways: usize, tweak: impl Fn(&mut GatewayConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let cluster = LocalCluster::start_new(dir.path(), 3, |_| {})
            .await
            .unwrap();
        cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
        let mut config = GatewayConfig {
            listen_addr: "127.0.0.1:0".into(),
            access_key: ACCESS.into(),
            secret_key: SECRET.into(),
            ..GatewayConfig::default()
        };
        tweak(&mut config);
        let mut started = Vec::new();
        for _ in 0..gateways {
            let kv = Arc::new(cluster.client().unwrap());
            started.push(Gateway::start(&config, kv).await.unwrap());
        }
        let s3 = client(&endpoint(&started[0]), ACCESS, SECRET);
        Harness {
            cluster,
            gateways: started,
            s3,
            _dir: dir,
        }
    }

    async fn stop(self) {
        for g in self.gateways {
            g.shutdown().await;
        }
        self.cluster.shutdown().await;
    }
}

fn endpoint(gateway: &Gateway) -> String {
    format!("http://{}", gateway.addr())
}

/// An SDK client of `endpoint`, path-style, over plain HTTP.
fn client(endpoint: &str, access: &str, secret: &str) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(access, secret, None, None, "test"))
        .force_path_style(true)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    Client::from_conf(config)
}

/// The HTTP status and S3 error code of a request that must fail.
fn fails<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    result: Result<T, SdkError<E>>,
) -> (u16, String) {
    let err = result.expect_err("the request must fail");
    let status = err.raw_response().map_or(0, |r| r.status().as_u16());
    (status, err.code().unwrap_or("").to_string())
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(seed as u32 * 2 + 1) as u8 ^ (i >> 11) as u8)
        .collect()
}

fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn read(body: ByteStream) -> Vec<u8> {
    body.collect().await.unwrap().into_bytes().to_vec()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

mod lifecycle;
mod listing;
mod multipart;
mod objects;
mod presign;
mod wire;
