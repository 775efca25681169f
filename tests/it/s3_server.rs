//! The S3 server that tests and benchmarks use, described by `TAGFLOW_TEST_S3_*`
//! (`.ci/seaweedfs start DIR` writes them to `DIR/env`). Included by `tests/it/s3.rs` and
//! `benches/incremental.rs`.

use std::net::SocketAddr;

use tagflow::storage::{Location, StoreOptions};

pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

#[allow(dead_code)] // each includer uses its part
impl S3 {
    /// The server named by the environment, if it names one.
    pub fn from_env() -> Option<S3> {
        let var = |name: &str| std::env::var(format!("TAGFLOW_TEST_S3_{name}")).ok();
        Some(S3 {
            endpoint: var("ENDPOINT")?,
            bucket: var("BUCKET")?,
            access_key_id: var("ACCESS_KEY_ID")?,
            secret_access_key: var("SECRET_ACCESS_KEY")?,
        })
    }

    /// A fresh prefix: `name-<uuid>`.
    pub fn unique(name: &str) -> String {
        format!("{name}-{}", uuid::Uuid::new_v4().simple())
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    pub fn options(&self, endpoint: &str) -> StoreOptions {
        StoreOptions {
            endpoint: Some(endpoint.to_string()),
            region: Some("us-east-1".into()),
            path_style: Some(true),
            allow_http: Some(true),
            access_key_id: Some(self.access_key_id.clone()),
            secret_access_key: Some(self.secret_access_key.clone()),
            ..Default::default()
        }
    }

    pub fn location(&self, prefix: &str) -> Location {
        Location::parse(&self.url(prefix), &self.options(&self.endpoint)).expect("s3 location")
    }

    /// A landing zone and a warehouse under a new prefix named after `name`.
    pub fn landing_and_warehouse(&self, name: &str) -> (Location, Location) {
        let root = Self::unique(name);
        (
            self.location(&format!("{root}/landing")),
            self.location(&format!("{root}/warehouse")),
        )
    }

    /// A `tagflow.toml` for landing and warehouse under `root`, through `endpoint`, with
    /// `secret` and `extra` lines in both `[storage.*]` sections.
    pub fn config(&self, root: &str, endpoint: &str, secret: &str, extra: &str) -> String {
        let section = |name: &str| {
            format!(
                "[storage.{name}]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\npath_style = true\n\
                 allow_http = true\naccess_key_id = \"{}\"\nsecret_access_key = \"{secret}\"\n{extra}\n",
                self.access_key_id
            )
        };
        format!(
            "landing = \"{}\"\nwarehouse = \"{}\"\n{}{}",
            self.url(&format!("{root}/landing")),
            self.url(&format!("{root}/warehouse")),
            section("landing"),
            section("warehouse")
        )
    }

    /// The endpoint's socket address (a test endpoint is `http://IP:PORT`).
    pub fn upstream(&self) -> SocketAddr {
        let host = self.endpoint.trim_start_matches("http://").trim_end_matches('/');
        host.parse().expect("the test endpoint is http://IP:PORT")
    }
}
