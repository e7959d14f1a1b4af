//! The `wardnet-controller` command line: `serve`, the local bootstrap of
//! the first admin token, and the admin commands that call the REST API.

// A CLI prints its results.
#![allow(clippy::print_stdout)]

mod args;
mod client;
mod rules;
mod sites;
mod table;

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use wardnet_common::wire::{
    AuditEntry, CreateOrg, CreateRegion, CreateSite, FileSdGroup, FleetHealth, OrgView, RegionView,
    SiteCreated, SiteState, SiteView, StatusSummary, UpdateOrg, UpdateSite,
};
use wardnet_common::{Endpoint, Name, PublicKey, Role};

pub use args::*;
pub use client::{ApiClient, ClientError};
use rules::policy;
use sites::{sites, Deleted};
use table::Table;

use wardnet_common::policy::{
    CheckAnswer, CreateRule, PolicyView, PortRange, Proto, RuleView, Service, ServiceRef,
    ServiceView, SharedWith, Source, Target,
};

pub use wardnet_service::docs::generate_docs;

/// Run an admin command against the API.
pub async fn run_client(command: Command) -> Result<()> {
    match command {
        Command::Orgs { api, command } => orgs(&api, command).await,
        Command::Policy { api, command } => policy(&api, command).await,
        Command::Regions { api, command } => regions(&api, command).await,
        Command::Sites { api, command } => sites(&api, command).await,
        Command::Prometheus { api, command } => prometheus(&api, command).await,
        Command::Audit { api, limit } => {
            let c = ApiClient::new(&api)?;
            let entries: Vec<AuditEntry> = c.get(&format!("/v1/audit?limit={limit}")).await?;
            print_out(api.output, &entries, || {
                let mut t = Table::new(&["ID", "TIME", "ACTOR", "ACTION", "OBJECT", "DETAIL"]);
                for e in &entries {
                    t.row(vec![
                        e.id.to_string(),
                        table::time(Some(e.at)),
                        e.actor.clone(),
                        e.action.clone(),
                        e.object.clone(),
                        e.detail.clone().unwrap_or_default(),
                    ]);
                }
                t
            })
        }
        Command::Status { api } => {
            let c = ApiClient::new(&api)?;
            let s: StatusSummary = c.get("/v1/status").await?;
            print_out(api.output, &s, || {
                let mut t = Table::new(&["WHAT", "COUNT"]);
                for (k, v) in [
                    ("regions", s.regions),
                    ("sites pending", s.sites_pending),
                    ("sites active", s.sites_active),
                    ("sites revoked", s.sites_revoked),
                    ("hubs", s.hubs),
                    ("spokes", s.spokes),
                    ("agents online", s.agents_online),
                    ("configs pending delivery", s.configs_pending_delivery),
                    ("long-poll waiters", s.long_poll_waiters),
                ] {
                    t.row(vec![k.to_owned(), v.to_string()]);
                }
                t
            })
        }
        Command::Serve { .. }
        | Command::AdminToken { .. }
        | Command::Ca { .. }
        | Command::Completion { .. }
        | Command::GenerateDocs { .. } => unreachable!("handled by main"),
    }
}

async fn orgs(api: &ApiArgs, command: OrgsCommand) -> Result<()> {
    let c = ApiClient::new(api)?;
    match command {
        OrgsCommand::Add {
            name,
            description,
            delegate,
        } => {
            let req = CreateOrg {
                name,
                description,
                delegated: delegate.into_iter().collect(),
            };
            let o: OrgView = c.post("/v1/orgs", &req).await?;
            print_orgs(api.output, &[o], false)
        }
        OrgsCommand::Delegate { name, prefixes } => {
            let o: OrgView = c.get(&format!("/v1/orgs/{name}")).await?;
            let mut now = o.delegated;
            now.extend(prefixes);
            let o = set_delegation(&c, &name, now).await?;
            print_orgs(api.output, &[o], false)
        }
        OrgsCommand::Undelegate { name, prefixes } => {
            let o: OrgView = c.get(&format!("/v1/orgs/{name}")).await?;
            let mut now = o.delegated;
            for p in &prefixes {
                if !now.remove(p) {
                    let had: Vec<String> = now.iter().map(ToString::to_string).collect();
                    anyhow::bail!(
                        "{p} was not delegated to organisation {name} (it has: {}); name a prefix as `orgs show {name}` lists it",
                        if had.is_empty() { "none".to_owned() } else { had.join(", ") }
                    );
                }
            }
            let o = set_delegation(&c, &name, now).await?;
            print_orgs(api.output, &[o], false)
        }
        OrgsCommand::List => {
            let os: Vec<OrgView> = c.get("/v1/orgs").await?;
            print_orgs(api.output, &os, true)
        }
        OrgsCommand::Show { name } => {
            let o: OrgView = c.get(&format!("/v1/orgs/{name}")).await?;
            print_orgs(api.output, &[o], false)
        }
        OrgsCommand::Delete { name } => {
            c.delete(&format!("/v1/orgs/{name}")).await?;
            let done = Deleted {
                kind: "organisation",
                name,
            };
            print_out(api.output, &done, || done.table())
        }
    }
}

/// Replace an organisation's delegated address space.
async fn set_delegation(
    c: &ApiClient,
    name: &Name,
    prefixes: std::collections::BTreeSet<ipnet::IpNet>,
) -> Result<OrgView> {
    let req = UpdateOrg {
        description: None,
        delegated: Some(prefixes),
    };
    c.patch(&format!("/v1/orgs/{name}"), &req).await
}

fn print_orgs(output: Output, os: &[OrgView], list: bool) -> Result<()> {
    let json: &dyn erased::Json = if list { &os } else { &os[0] };
    print_out(output, json, || {
        let mut t = Table::new(&[
            "ORGANISATION",
            "SITES",
            "DELEGATED",
            "CREATED",
            "DESCRIPTION",
        ]);
        for o in os {
            let lans: Vec<String> = o.delegated.iter().map(ToString::to_string).collect();
            t.row(vec![
                o.name.to_string(),
                o.sites.to_string(),
                if lans.is_empty() {
                    "-".to_owned()
                } else {
                    lans.join(",")
                },
                table::time(Some(o.created_at)),
                o.description.clone(),
            ]);
        }
        t
    })
}

async fn regions(api: &ApiArgs, command: RegionsCommand) -> Result<()> {
    let c = ApiClient::new(api)?;
    match command {
        RegionsCommand::Add { name, mesh } => {
            let r: RegionView = c.post("/v1/regions", &CreateRegion { name, mesh }).await?;
            print_regions(api.output, &[r], false)
        }
        RegionsCommand::List => {
            let rs: Vec<RegionView> = c.get("/v1/regions").await?;
            print_regions(api.output, &rs, true)
        }
        RegionsCommand::Show { name } => {
            let r: RegionView = c.get(&format!("/v1/regions/{name}")).await?;
            print_regions(api.output, &[r], false)
        }
        RegionsCommand::Delete { name } => {
            c.delete(&format!("/v1/regions/{name}")).await?;
            let done = Deleted {
                kind: "region",
                name,
            };
            print_out(api.output, &done, || done.table())
        }
    }
}

fn print_regions(output: Output, rs: &[RegionView], list: bool) -> Result<()> {
    let json: &dyn erased::Json = if list { &rs } else { &rs[0] };
    print_out(output, json, || {
        let mut t = Table::new(&[
            "REGION",
            "MESH",
            "IPV4 BLOCK",
            "IPV6 BLOCK",
            "SITES",
            "HUBS",
        ]);
        for r in rs {
            let online = r.hubs.iter().filter(|h| h.online).count();
            t.row(vec![
                r.name.to_string(),
                if r.mesh { "yes" } else { "no" }.into(),
                r.ipv4_block.to_string(),
                r.ipv6_block
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.sites.to_string(),
                format!("{online}/{} online", r.hubs.len()),
            ]);
        }
        if !list {
            // One region: each hub, its health and its spokes.
            for h in rs.iter().flat_map(|r| &r.hubs) {
                let peers = match (h.peers_up, h.peers_total) {
                    (Some(u), Some(n)) => format!("{u}/{n} peers up"),
                    _ => "no report".into(),
                };
                t.row(vec![
                    format!("  hub {}", h.name),
                    if h.online { "online" } else { "OFFLINE" }.into(),
                    peers,
                    format!("carries {} spokes", h.spokes_carried),
                    format!("assigned {}", h.spokes_assigned),
                    String::new(),
                ]);
            }
        }
        t
    })
}

mod erased {
    /// Object-safe "can be printed as JSON".
    pub(super) trait Json {
        fn to_json(&self) -> serde_json::Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<String> {
            serde_json::to_string_pretty(self)
        }
    }
}

async fn prometheus(api: &ApiArgs, command: PrometheusCommand) -> Result<()> {
    let c = ApiClient::new(api)?;
    match command {
        PrometheusCommand::Targets { out } => {
            let groups: Vec<FileSdGroup> = c.get("/v1/prometheus/targets").await?;
            let mut json = serde_json::to_string_pretty(&groups)?;
            json.push('\n');
            match out {
                None => print_out(api.output, &groups, || table::targets(&groups))?,
                Some(path) => {
                    // Prometheus re-reads file_sd files on change: never let
                    // it see half a file.
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, &json)
                        .with_context(|| format!("failed to write {}", tmp.display()))?;
                    std::fs::rename(&tmp, &path)
                        .with_context(|| format!("failed to replace {}", path.display()))?;
                }
            }
            Ok(())
        }
    }
}

fn print_out(
    output: Output,
    value: &dyn erased::Json,
    table: impl FnOnce() -> Table,
) -> Result<()> {
    match output {
        Output::Json => println!("{}", value.to_json()?),
        Output::Table => print!("{}", table()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn generates_completions_and_man_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_docs(Cli::command(), dir.path()).expect("generate");
        for f in [
            "wardnet-controller.bash",
            "_wardnet-controller",
            "wardnet-controller.fish",
            "wardnet-controller.1",
            "wardnet-controller-ca.1",
            "wardnet-controller-sites.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(f)).expect(f);
            assert!(text.contains("wardnet-controller"), "{f}");
        }
        assert!(!dir
            .path()
            .join("wardnet-controller-generate-docs.1")
            .exists());
    }

    #[test]
    fn sites_add_parses_repeated_lans_and_rejects_bad_prefixes() {
        let cli = Cli::try_parse_from([
            "wardnet-controller",
            "sites",
            "add",
            "gp-1",
            "--region",
            "north",
            "--role",
            "spoke",
            "--lan",
            "10.1.0.0/24",
            "--lan",
            "10.1.1.0/24",
        ])
        .expect("valid");
        let Command::Sites {
            command: SitesCommand::Add { lan, .. },
            ..
        } = cli.command
        else {
            panic!("parsed as sites add");
        };
        assert_eq!(lan.len(), 2);
        let e = Cli::try_parse_from([
            "wardnet-controller",
            "sites",
            "add",
            "gp-1",
            "--region",
            "north",
            "--role",
            "spoke",
            "--lan",
            "10.1.0.1/24",
        ])
        .expect_err("host bits");
        assert!(e.to_string().contains("did you mean 10.1.0.0/24"), "{e}");
    }
}
