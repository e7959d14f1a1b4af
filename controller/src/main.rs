//! `wardnet-controller`: see `wardnet-controller --help`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use wardnet_controller::cli::{AdminTokenCommand, CaCommand, Cli, Command, Output};
use wardnet_controller::config::{Config, Transport, EXIT_USAGE};
use wardnet_controller::logging;
use wardnet_controller::notify;
use wardnet_controller::store::{
    read_password_file, PostgresSettings, PostgresStore, SqliteStore, Store,
};
use wardnet_controller::{Actor, Controller, ServiceSettings, SystemClock};

fn main() -> ExitCode {
    // Logging starts in `run`: `serve` reads log_format from its config.
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<wardnet_controller::config::ConfigError>()
                .is_some()
            {
                ExitCode::from(EXIT_USAGE as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    if !matches!(cli.command, Command::Serve { .. }) {
        logging::init_cli();
    }
    match cli.command {
        Command::Serve { config } => serve(&config).await,
        Command::Completion { shell } => {
            use clap::CommandFactory;
            wardnet_service::docs::print_completion(Cli::command(), shell);
            Ok(())
        }
        Command::GenerateDocs { dir } => {
            use clap::CommandFactory;
            wardnet_controller::cli::generate_docs(Cli::command(), &dir)
        }
        Command::Ca {
            command:
                CaCommand::Init {
                    dir,
                    hosts,
                    days,
                    force,
                    output,
                },
        } => {
            let files = wardnet_controller::ca::init(&dir, &hosts, days, force)?;
            #[allow(clippy::print_stdout)]
            if output.output == Output::Json {
                let v = serde_json::json!({
                    "hosts": hosts,
                    "days": days,
                    "ca_cert": files.ca_cert,
                    "ca_key": files.ca_key,
                    "server_cert": files.server_cert,
                    "server_key": files.server_key,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                eprintln!(
                    "created a private CA and a server certificate for {} (valid {days} days):",
                    hosts.join(", ")
                );
                eprintln!(
                    "  server certificate (chain): {}",
                    files.server_cert.display()
                );
                eprintln!(
                    "  server key (0600):          {}",
                    files.server_key.display()
                );
                eprintln!("  CA key (0600, keep safe):   {}", files.ca_key.display());
                eprintln!(
                    "give agents the CA certificate: wardnet-agent enroll ... --ca-cert ca.crt"
                );
                println!("{}", files.ca_cert.display());
            }
            Ok(())
        }
        Command::AdminToken {
            command:
                AdminTokenCommand::Create {
                    config,
                    description,
                    org,
                    output,
                },
        } => {
            let config = Config::load(&config, |k| std::env::var(k).ok())?;
            let controller = open(&config).await?;
            let (id, secret) = controller
                .create_admin_token(&Actor::local(), &description, org.as_ref())
                .await
                .context("failed to store the admin token")?;
            let scope = org.as_ref().map_or_else(
                || "network-wide".to_owned(),
                |o| format!("scoped to organisation {o}"),
            );
            #[allow(clippy::print_stdout)]
            if output.output == Output::Json {
                let v = serde_json::json!({
                    "id": id,
                    "description": description,
                    "org": org,
                    "token": secret,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                eprintln!("created admin token {id} ({description}, {scope}); it is shown once:");
                println!("{secret}");
            }
            Ok(())
        }
        other => wardnet_controller::cli::run_client(other).await,
    }
}

/// The store the config names: PostgreSQL (replicas) or the SQLite file.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    let Some(pg) = &config.postgres else {
        let store = SqliteStore::open(&config.sqlite_path).with_context(|| {
            format!("failed to open the store {}", config.sqlite_path.display())
        })?;
        return Ok(Arc::new(store));
    };
    // The password from a file: database.password_file, or the systemd
    // credential `database-password` (LoadCredential=) when there is one.
    let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|d| std::path::PathBuf::from(d).join("database-password"))
        .filter(|p| p.exists());
    let password = match pg.password_file.as_ref().or(credential.as_ref()) {
        Some(file) => Some(read_password_file(file).with_context(|| {
            format!(
                "failed to read the database password from {} (database.password_file)",
                file.display()
            )
        })?),
        None => None,
    };
    let settings = PostgresSettings {
        url: pg.url.clone(),
        password,
        pool_size: pg.pool_size,
    };
    let no_password = settings.password.is_none();
    let store = PostgresStore::open(&settings).await.map_err(|e| {
        let why = e.to_string();
        let hint = if no_password && why.contains("password") {
            "; no password was given: set database.password_file or \
             WARDNET_DATABASE_PASSWORD_FILE, or run under the unit's credential database-password"
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!(
            "failed to open the PostgreSQL store (database.url = {:?}){hint}",
            pg.url
        ))
    })?;
    Ok(Arc::new(store))
}

/// Where the store is, for logs (never a password: the URL holds none).
fn store_label(config: &Config) -> String {
    match &config.postgres {
        Some(pg) => pg.url.clone(),
        None => config.sqlite_path.display().to_string(),
    }
}

async fn open(config: &Config) -> Result<Arc<Controller>> {
    let store = open_store(config).await?;
    let settings = ServiceSettings {
        network: config.network.clone(),
        token_lifetime_secs: config.token_lifetime_secs,
        long_poll_timeout: std::time::Duration::from_secs(config.long_poll_timeout_secs),
        report_persist_interval: std::time::Duration::from_secs(config.report_persist_secs),
    };
    Controller::start(store, settings, Arc::new(SystemClock))
        .await
        .context("failed to load the store")
}

/// Whether opening failed because the database did not answer (as opposed
/// to refusing: a wrong password, a schema too new).
fn database_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<wardnet_controller::store::StoreError>(),
            Some(wardnet_controller::store::StoreError::Unavailable(_))
        )
    })
}

async fn serve(path: &std::path::Path) -> Result<()> {
    let config = Config::load(path, |k| std::env::var(k).ok())?;
    logging::init(config.log_format);
    // Each waiting agent holds a descriptor: the soft limit a shell gives
    // (1,024) would make a controller run by hand stall at ~1,000 agents.
    match wardnet_service::limits::raise_nofile() {
        Ok(n) if n < 65_536 => tracing::warn!(
            limit = n,
            "the open-file limit is low: each waiting agent holds one connection; raise the hard \
             limit (LimitNOFILE= in the unit, or `ulimit -Hn` before starting)"
        ),
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
    // Before READY=1: a stop that follows at once must be a clean shutdown.
    let mut stop = Box::pin(
        wardnet_service::shutdown::on_signal().context("failed to install the SIGTERM handler")?,
    );
    // The certificate first: a controller that cannot serve must not create
    // its data directory and database on the way to failing.
    let tls = match &config.transport {
        Transport::Tls { cert, key } => wardnet_controller::api::Tls::Rustls(
            wardnet_controller::api::tls_config(cert, key)
                .map_err(|e| config.tls_error(path, &e))?,
        ),
        Transport::PlainHttp => {
            tracing::warn!("serving plain HTTP (plain_http = true): tokens and credentials cross the network in clear");
            wardnet_controller::api::Tls::None
        }
    };
    // A database that does not answer yet (the host booting, a failover)
    // is waited for: exiting would have systemd restart the controller
    // every 2 s until its start limit gives up on it.
    let controller = loop {
        match open(&config).await {
            Ok(c) => break c,
            Err(e) if config.postgres.is_some() && database_unavailable(&e) => {
                let why = format!("{e:#}");
                tracing::warn!(error = why, "waiting for the database; trying again in 2 s");
                notify::status(&format!("waiting for the database: {why}"));
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                    _ = &mut stop => {
                        tracing::info!("stopped while waiting for the database");
                        return Ok(());
                    }
                }
            }
            Err(e) => return Err(e),
        }
    };
    let shutdown = async move {
        stop.await;
        notify::stopping();
        tracing::info!("shutting down");
    };
    let listener = wardnet_controller::api::listen(config.listen)
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, store = %store_label(&config), "controller serving");
    // The store is loaded and the socket listens: connections queue in the
    // backlog until the server accepts them, so this is "really serving".
    let bound = listener
        .local_addr()
        .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
    notify::ready(&format!("serving on {bound}"));
    let watchdog = tokio::spawn(async {
        let mut dog = notify::Watchdog::from_env();
        loop {
            dog.tick().await;
            notify::watchdog();
        }
    });
    let result =
        wardnet_controller::api::serve(listener, controller.clone(), tls, config.limits, shutdown)
            .await
            .context("the API server failed");
    // Agents' last reports, so a clean restart loses none of them.
    controller.persist_reports_at_stop().await;
    watchdog.abort();
    notify::stopping();
    result?;
    tracing::info!("controller stopped");
    Ok(())
}
