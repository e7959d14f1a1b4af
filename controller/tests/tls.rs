//! The API over TLS (the default transport): a client that trusts the
//! controller's CA gets answers; one that does not is refused with an error
//! that says the certificate is the problem.

mod common;

use std::sync::Arc;

use wardnet_controller::cli::ApiClient;
use wardnet_controller::service::{Actor, Controller};
use wardnet_controller::store::{SqliteStore, Store};

fn self_signed(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
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
    let store = SqliteStore::open(&dir.path().join("w.db")).expect("store");
    let controller = Controller::start(
        Arc::new(store) as Arc<dyn Store>,
        common::settings(),
        Arc::new(wardnet_controller::service::SystemClock),
    )
    .await
    .expect("controller");
    let (_, token) = controller
        .create_admin_token(&Actor::local(), "tls")
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
