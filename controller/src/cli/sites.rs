//! `sites …`: adding, changing, revoking, exporting and deleting sites.

use super::*;

pub(super) async fn sites(api: &ApiArgs, command: SitesCommand) -> Result<()> {
    let c = ApiClient::new(api)?;
    match command {
        SitesCommand::Add {
            name,
            region,
            role,
            lan,
            endpoint,
            public_key,
            org,
        } => {
            let req = CreateSite {
                name,
                region,
                org,
                role,
                lan_prefixes: lan.into_iter().collect(),
                endpoint,
                public_key,
            };
            let created: SiteCreated = c.post("/v1/sites", &req).await?;
            print_created(api.output, &created)
        }
        SitesCommand::List { region, state } => {
            let mut q = Vec::new();
            if let Some(r) = region {
                q.push(format!("region={r}"));
            }
            if let Some(s) = state {
                q.push(format!("state={s}"));
            }
            let path = if q.is_empty() {
                "/v1/sites".to_owned()
            } else {
                format!("/v1/sites?{}", q.join("&"))
            };
            let sites: Vec<SiteView> = c.get(&path).await?;
            let fleet: FleetHealth = c.get("/v1/health").await?;
            print_out(api.output, &sites, || table::sites(&sites, &fleet))
        }
        SitesCommand::Show { name } => {
            let s: SiteView = c.get(&format!("/v1/sites/{name}")).await?;
            let fleet: FleetHealth = c.get("/v1/health").await?;
            print_out(api.output, &s, || {
                let mut t = table::site_detail(&s);
                table::site_health_rows(&mut t, &s, &fleet);
                t
            })
        }
        SitesCommand::Update {
            name,
            lan,
            endpoint,
            clear_endpoint,
        } => {
            let lan_prefixes = if lan.is_empty() {
                None
            } else if lan == ["none"] {
                Some(BTreeSet::new())
            } else {
                Some(
                    lan.iter()
                        .map(|s| parse_prefix(s).map_err(anyhow::Error::msg))
                        .collect::<Result<BTreeSet<_>>>()?,
                )
            };
            let endpoint = if clear_endpoint {
                Some(None)
            } else {
                endpoint.map(Some)
            };
            let s: SiteView = c
                .patch(
                    &format!("/v1/sites/{name}"),
                    &UpdateSite {
                        lan_prefixes,
                        endpoint,
                    },
                )
                .await?;
            print_out(api.output, &s, || table::site_detail(&s))
        }
        SitesCommand::Revoke { name } => {
            let s: SiteView = c
                .post(&format!("/v1/sites/{name}/revoke"), &serde_json::json!({}))
                .await?;
            print_out(api.output, &s, || table::site_detail(&s))
        }
        SitesCommand::Renumber { name, finish } => {
            let s: SiteView = c
                .post(
                    &format!("/v1/sites/{name}/renumber"),
                    &wardnet_common::wire::RenumberSite { finish },
                )
                .await?;
            print_out(api.output, &s, || table::site_detail(&s))
        }
        SitesCommand::Delete { name } => {
            c.delete(&format!("/v1/sites/{name}")).await?;
            let done = Deleted { kind: "site", name };
            print_out(api.output, &done, || done.table())
        }
        SitesCommand::Token { name } => {
            let created: SiteCreated = c
                .post(&format!("/v1/sites/{name}/token"), &serde_json::json!({}))
                .await?;
            print_created(api.output, &created)
        }
        SitesCommand::Export { name, out } => {
            let text = c.get_text(&format!("/v1/sites/{name}/wg-quick")).await?;
            if let Some(path) = &out {
                write_private(path, &text)
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
            match (api.output, &out) {
                (Output::Json, _) => {
                    let v = Exported {
                        site: name,
                        format: "wg-quick",
                        written_to: out.clone(),
                        config: out.is_none().then_some(text),
                    };
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                (Output::Table, Some(path)) => println!("wrote {}", path.display()),
                (Output::Table, None) => print!("{text}"),
            }
            Ok(())
        }
    }
}

/// What `regions delete` and `sites delete` print with `-o json`.
#[derive(serde::Serialize)]
pub(super) struct Deleted {
    pub(super) kind: &'static str,
    pub(super) name: Name,
}

impl Deleted {
    pub(super) fn table(&self) -> Table {
        let mut t = Table::new(&["DELETED", "NAME"]);
        t.row(vec![self.kind.to_owned(), self.name.to_string()]);
        t
    }
}

/// What `sites export -o json` prints: the config text unless it went to a file.
#[derive(serde::Serialize)]
pub(super) struct Exported {
    site: Name,
    format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    written_to: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<String>,
}

pub(super) fn print_created(output: Output, created: &SiteCreated) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(created)?);
        return Ok(());
    }
    print!("{}", table::site_detail(&created.site));
    if let Some(token) = &created.token {
        println!();
        println!(
            "Enrolment token (shown once, valid until {}):",
            table::time(created.token_expires_at)
        );
        println!("  {token}");
        println!("On the site's gateway run this, then paste the token and press Enter:");
        println!(
            "  wardnet-agent enroll --controller <URL> --ca-cert /etc/wardnet/ca.crt --token-file -{}",
            if created.site.role == Role::Hub {
                " --endpoint <PUBLIC-IP:PORT>"
            } else {
                ""
            }
        );
    }
    Ok(())
}

pub(super) fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}
