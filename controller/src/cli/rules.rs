//! `policy …`: rules, services and the reachability check.

use super::*;

pub(super) async fn policy(api: &ApiArgs, command: PolicyCommand) -> Result<()> {
    let c = ApiClient::new(api)?;
    match command {
        PolicyCommand::List => {
            let p: PolicyView = c.get("/v1/policy").await?;
            print_out(api.output, &p, || table::policy(&p.rules, &p.services))
        }
        PolicyCommand::Show { what } => {
            if let Ok(id) = what.parse::<u64>() {
                let r: RuleView = c.get(&format!("/v1/policy/rules/{id}")).await?;
                print_out(api.output, &r, || {
                    table::policy(std::slice::from_ref(&r), &[])
                })
            } else {
                let name: ServiceRef = what.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "{what:?} is neither a rule's number nor a service's name (NAME or ORG/NAME)"
                    )
                })?;
                let s: ServiceView = c.get(&format!("/v1/policy/services/{name}")).await?;
                print_out(api.output, &s, || {
                    table::policy(&[], std::slice::from_ref(&s))
                })
            }
        }
        PolicyCommand::Check {
            from,
            to,
            proto,
            port,
            address,
        } => {
            let mut q = format!("/v1/policy/check?from={from}&to={to}&proto={proto}");
            if let Some(p) = port {
                q.push_str(&format!("&port={p}"));
            }
            if let Some(a) = address {
                q.push_str(&format!("&address={a}"));
            }
            let a: CheckAnswer = c.get(&q).await?;
            print_out(api.output, &a, || {
                let mut t =
                    Table::new(&["FROM", "TO", "TRAFFIC", "ANSWER", "DECIDED BY", "ENFORCED"]);
                let traffic = match port {
                    Some(p) => format!("{proto}/{p}"),
                    None => proto.to_string(),
                };
                t.row(vec![
                    from.to_string(),
                    to.to_string(),
                    traffic,
                    if a.allow { "allow" } else { "deny" }.into(),
                    a.because.clone(),
                    if a.enforced {
                        "yes"
                    } else {
                        "no (not filtered there)"
                    }
                    .into(),
                ]);
                t
            })
        }
        PolicyCommand::AddRule {
            from,
            to,
            proto,
            ports,
            description,
        } => {
            let req = CreateRule {
                from,
                to,
                proto,
                ports,
                description,
            };
            let r: RuleView = c.post("/v1/policy/rules", &req).await?;
            print_out(api.output, &r, || {
                table::policy(std::slice::from_ref(&r), &[])
            })
        }
        PolicyCommand::DeleteRule { id } => {
            c.delete(&format!("/v1/policy/rules/{id}")).await?;
            let done = serde_json::json!({"kind": "rule", "id": id});
            print_out(api.output, &done, || {
                let mut t = Table::new(&["DELETED"]);
                t.row(vec![format!("rule {id}")]);
                t
            })
        }
        PolicyCommand::AddService {
            name,
            site,
            prefixes,
            proto,
            ports,
            shared_with,
            description,
        } => {
            let shared_with = if shared_with.iter().any(|s| s == "all") {
                SharedWith::All
            } else {
                SharedWith::Orgs(
                    shared_with
                        .iter()
                        .map(|s| {
                            s.parse::<Name>()
                                .map_err(|e| anyhow::anyhow!("--shared-with {s:?}: {}", e.0))
                        })
                        .collect::<Result<_>>()?,
                )
            };
            let req = Service {
                name,
                site,
                prefixes: prefixes.into_iter().collect(),
                proto,
                ports,
                shared_with,
                description,
            };
            let s: ServiceView = c.post("/v1/policy/services", &req).await?;
            print_out(api.output, &s, || {
                table::policy(&[], std::slice::from_ref(&s))
            })
        }
        PolicyCommand::DeleteService { name } => {
            c.delete(&format!("/v1/policy/services/{name}")).await?;
            let done = serde_json::json!({"kind": "service", "name": name.to_string()});
            print_out(api.output, &done, || {
                let mut t = Table::new(&["DELETED", "NAME"]);
                t.row(vec!["service".into(), name.to_string()]);
                t
            })
        }
    }
}
