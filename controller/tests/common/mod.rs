//! An in-process controller on port 0 with a temporary SQLite store.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use wardnet_controller::model::NetworkSettings;
use wardnet_controller::store::{SqliteStore, Store};
use wardnet_controller::{Actor, Clock, Controller, ServiceSettings};

pub(crate) struct ManualClock(pub AtomicI64);

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub(crate) struct TestController {
    pub url: String,
    pub admin: String,
    pub clock: Arc<ManualClock>,
    pub db: PathBuf,
    pub controller: Arc<Controller>,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

pub(crate) fn settings() -> ServiceSettings {
    ServiceSettings {
        network: NetworkSettings {
            overlay_v4: "100.64.0.0/10".parse().expect("prefix"),
            overlay_v6: Some("fd7a:6e65::/48".parse().expect("prefix")),
            region_prefix_len_v4: 20,
            region_prefix_len_v6: 64,
            routed_prefixes: BTreeSet::from(["10.0.0.0/8".parse().expect("prefix")]),
            listen_port: 51820,
            mtu: 1420,
            persistent_keepalive: 25,
        },
        token_lifetime_secs: 3600,
        long_poll_timeout: Duration::from_secs(30),
        report_persist_interval: std::time::Duration::from_secs(30),
    }
}

impl TestController {
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("wardnet.db");
        let mut t = Self::start_on(
            db,
            Arc::new(ManualClock(AtomicI64::new(1_800_000_000))),
            None,
        )
        .await;
        t._dir = Some(dir);
        t
    }

    /// Start on an existing database (restart tests), reusing an admin token.
    pub(crate) async fn start_on(
        db: PathBuf,
        clock: Arc<ManualClock>,
        admin: Option<String>,
    ) -> Self {
        let store = SqliteStore::open(&db).expect("open store");
        Self::start_with(Arc::new(store), settings(), db, clock, admin).await
    }

    /// Start on a given store (a fault-injecting wrapper, say) and settings.
    pub(crate) async fn start_with(
        store: Arc<dyn Store>,
        settings: ServiceSettings,
        db: PathBuf,
        clock: Arc<ManualClock>,
        admin: Option<String>,
    ) -> Self {
        wardnet_controller::init_crypto();
        let controller = Controller::start(store, settings, clock.clone())
            .await
            .expect("start controller");
        let admin = match admin {
            Some(a) => a,
            None => {
                controller
                    .create_admin_token(&Actor::local(), "tests", None)
                    .await
                    .expect("admin token")
                    .1
            }
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, task) = Self::serve(listener, controller.clone());
        Self {
            url,
            admin,
            clock,
            db,
            controller,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
            _dir: None,
        }
    }

    fn serve(
        listener: std::net::TcpListener,
        c: Arc<Controller>,
    ) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            wardnet_controller::api::serve(
                listener,
                c,
                wardnet_controller::api::Tls::None,
                wardnet_controller::api::Limits::default(),
                async {
                    let _ = rx.await;
                },
            )
            .await
            .expect("serve");
        });
        (tx, task)
    }

    /// Serve again on the same address after `stop` (an outage ends).
    pub(crate) fn resume(&mut self) {
        let addr = self.url.trim_start_matches("http://");
        let listener = std::net::TcpListener::bind(addr).expect("bind the same address again");
        let (stop, task) = Self::serve(listener, self.controller.clone());
        self.stop = Some(stop);
        self.task = Some(task);
    }

    /// Stop serving and wait until the server is gone; keeps the database.
    pub(crate) async fn stop(&mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        // As `serve` does after a clean stop: agents' last reports.
        self.controller.persist_reports().await;
        self._dir.take()
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        if let Some(body) = body {
            r = r.json(&body);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// A request with `token` (an organisation's, say).
    pub(crate) async fn as_token(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(method, path, Some(token), body).await
    }

    pub(crate) async fn admin_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            path,
            Some(&self.admin.clone()),
            Some(body),
        )
        .await
    }

    pub(crate) async fn admin_get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(&self.admin.clone()), None)
            .await
    }

    pub(crate) async fn region(&self, name: &str, mesh: bool) {
        let (s, v) = self
            .admin_post("/v1/regions", json!({"name": name, "mesh": mesh}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// Create an organisation with the network-wide token.
    pub(crate) async fn org(&self, name: &str) {
        let (s, v) = self
            .admin_post(
                "/v1/orgs",
                json!({"name": name, "description": format!("{name} for tests")}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// Delegate LAN space to organisation `org` (the NOC's token).
    pub(crate) async fn delegate(&self, org: &str, prefixes: &[&str]) {
        let (s, v) = self
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/orgs/{org}"),
                Some(&self.admin.clone()),
                Some(json!({"delegated": prefixes})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    /// An admin token scoped to organisation `org`: (id, secret).
    pub(crate) async fn scoped_token(&self, org: &str) -> (String, String) {
        self.controller
            .create_admin_token(
                &Actor::local(),
                &format!("{org} IT"),
                Some(&org.parse().expect("an organisation name")),
            )
            .await
            .expect("scoped token")
    }

    /// Add a site with `token` (a scoped one adds into its organisation)
    /// and return the answer.
    pub(crate) async fn site_as(&self, token: &str, body: Value) -> Value {
        let (s, v) = self
            .call(reqwest::Method::POST, "/v1/sites", Some(token), Some(body))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    /// Add a site and return its enrolment token (None for agentless).
    pub(crate) async fn site(&self, body: Value) -> Option<String> {
        let (s, v) = self.admin_post("/v1/sites", body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().map(str::to_owned)
    }

    /// Enrol with a fresh key; returns (status, body).
    pub(crate) async fn enroll(&self, token: &str, endpoint: Option<&str>) -> (StatusCode, Value) {
        let key = wardnet_common::PrivateKey::generate().public_key();
        let mut body = json!({"token": token, "public_key": key.to_string()});
        if let Some(e) = endpoint {
            body["endpoint"] = json!(e);
        }
        self.call(reqwest::Method::POST, "/v1/enroll", None, Some(body))
            .await
    }

    /// Enrol and return the agent credential.
    pub(crate) async fn enrolled(&self, token: &str, endpoint: Option<&str>) -> String {
        let (s, v) = self.enroll(token, endpoint).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["credential"].as_str().expect("credential").to_owned()
    }

    /// The long-poll as agents run it, with deltas.
    pub(crate) async fn agent_update(
        &self,
        credential: &str,
        revision: u64,
        wait: u64,
    ) -> (StatusCode, Value) {
        self.long_poll(credential, revision, wait, "&deltas=true")
            .await
    }

    /// The long-poll as agents from before deltas run it: full configs.
    pub(crate) async fn agent_config(
        &self,
        credential: &str,
        revision: u64,
        wait: u64,
    ) -> (StatusCode, Value) {
        self.long_poll(credential, revision, wait, "").await
    }

    async fn long_poll(
        &self,
        credential: &str,
        revision: u64,
        wait: u64,
        extra: &str,
    ) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/agent/config?revision={revision}&wait={wait}{extra}"),
            Some(credential),
            None,
        )
        .await
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub(crate) fn peer_names(config: &Value) -> Vec<String> {
    config["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
