//! The API over TLS (the default transport): a client that trusts the
//! controller's CA gets answers; one that does not is refused with an error
//! that says the certificate is the problem.

mod common;

use std::sync::Arc;

use wardnet_controller::cli::ApiClient;
use wardnet_controller::store::{SqliteStore, Store};
use wardnet_controller::{Actor, Controller};

async fn controller(dir: &std::path::Path) -> Arc<Controller> {
    let store = SqliteStore::open(&dir.join("w.db")).expect("store");
    Controller::start(
        Arc::new(store) as Arc<dyn Store>,
        common::settings(),
        Arc::new(wardnet_controller::SystemClock),
    )
    .await
    .expect("controller")
}

fn self_signed(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    self_signed_for(dir, name, &["127.0.0.1", "localhost"])
}

fn self_signed_for(
    dir: &std::path::Path,
    name: &str,
    hosts: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(
        hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
    )
    .expect("cert");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    (cert, key)
}

#[tokio::test]
async fn the_api_serves_tls_and_clients_verify_the_certificate() {
    wardnet_controller::init_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path(), "controller");
    let (other_ca, _) = self_signed(dir.path(), "other");
    let controller = controller(dir.path()).await;
    let (_, token) = controller
        .create_admin_token(&Actor::local(), "tls", None)
        .await
        .expect("token");
    let tls = wardnet_controller::api::tls_config(&cert, &key).expect("tls config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(wardnet_controller::api::serve(
        listener,
        controller,
        wardnet_controller::api::Tls::Rustls(tls),
        wardnet_controller::api::Limits::default(),
        async {
            let _ = stopped.await;
        },
    ));

    let trusted = ApiClient::with_token(&url, Some(token.clone()), Some(&cert)).expect("client");
    let status: wardnet_common::wire::StatusSummary = trusted
        .get("/v1/status")
        .await
        .expect("TLS request with the right CA");
    assert_eq!(status.regions, 0);

    let untrusted = ApiClient::with_token(&url, Some(token), Some(&other_ca)).expect("client");
    let err = untrusted
        .get::<wardnet_common::wire::StatusSummary>("/v1/status")
        .await
        .expect_err("a certificate from another CA is refused");
    let chain = format!("{err:#}").to_lowercase();
    assert!(
        chain.contains("certificate"),
        "the error names the certificate: {chain}"
    );

    let _ = stop.send(());
    server.await.expect("join").expect("serve");
}

/// The two mistakes a NOC makes most with TLS get errors that name them: a
/// URL whose host the certificate does not name (not blamed on the CA), and
/// https:// to a plain-HTTP port (not "InvalidContentType").
#[tokio::test]
async fn tls_mistakes_are_named() {
    wardnet_controller::init_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed_for(dir.path(), "c", &["controller.example"]);
    let controller = controller(dir.path()).await;
    let tls = wardnet_controller::api::tls_config(&cert, &key).expect("tls config");
    let tls_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let plain_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let tls_url = format!("https://{}", tls_listener.local_addr().expect("addr"));
    let plain_as_https = format!("https://{}", plain_listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for (listener, tls) in [
        (tls_listener, wardnet_controller::api::Tls::Rustls(tls)),
        (plain_listener, wardnet_controller::api::Tls::None),
    ] {
        let mut stopped = stopped.clone();
        tokio::spawn(wardnet_controller::api::serve(
            listener,
            controller.clone(),
            tls,
            wardnet_controller::api::Limits::default(),
            async move {
                let _ = stopped.changed().await;
            },
        ));
    }

    let client =
        ApiClient::with_token(&tls_url, Some("wnt_x".into()), Some(&cert)).expect("client");
    let err = client
        .get::<wardnet_common::wire::StatusSummary>("/v1/status")
        .await
        .expect_err("the certificate does not name 127.0.0.1");
    let msg = format!("{err:#}");
    assert!(msg.contains("not valid for \"127.0.0.1\""), "{msg}");
    assert!(!msg.contains("not signed by"), "{msg}");

    let client =
        ApiClient::with_token(&plain_as_https, Some("wnt_x".into()), None).expect("client");
    let err = client
        .get::<wardnet_common::wire::StatusSummary>("/v1/status")
        .await
        .expect_err("https:// to a plain-HTTP port");
    let msg = format!("{err:#}");
    assert!(msg.contains("plain-HTTP port"), "{msg}");
    assert!(!msg.contains("InvalidContentType"), "{msg}");
    let _ = stop.send(true);
}
