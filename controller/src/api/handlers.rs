//! Thin HTTP handlers over the service layer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use wardnet_common::policy::{CheckQuery, CreateRule, Service, ServiceRef};
use wardnet_common::wire::{
    AgentReport, ConfigQuery, CreateOrg, CreateRegion, CreateSite, EnrollRequest, SiteState,
    UpdateOrg, UpdateSite,
};
use wardnet_common::Name;

use super::extract::{Admin, Agent, Json, Query};
use crate::error::Error;
use crate::pipeline::Controller;

type Ctl = State<Arc<Controller>>;
type ApiResult<T> = Result<T, Error>;

fn name(kind: &str, raw: &str) -> ApiResult<Name> {
    raw.parse()
        .map_err(|_| Error::NotFound(format!("no {kind} named {raw:?}")))
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn metrics(State(c): Ctl) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(&c),
    )
        .into_response()
}

pub(super) async fn not_found() -> Error {
    Error::NotFound("no such route; the API is documented in docs/openapi.yaml".into())
}

pub(super) async fn method_not_allowed() -> Response {
    let body = wardnet_common::wire::ErrorBody {
        error: "method_not_allowed".into(),
        message: "this route does not take that method; see docs/openapi.yaml".into(),
    };
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

// ----- agents --------------------------------------------------------------

pub(super) async fn enroll(State(c): Ctl, Json(req): Json<EnrollRequest>) -> ApiResult<Response> {
    let resp = c.enroll(req).await?;
    Ok((StatusCode::CREATED, axum::Json(resp)).into_response())
}

pub(super) async fn agent_config(
    State(c): Ctl,
    Agent(who): Agent,
    Query(q): Query<ConfigQuery>,
) -> ApiResult<Response> {
    let wait = q.wait.map(Duration::from_secs);
    match c.agent_config(&who, q.revision, wait, q.deltas).await? {
        Some(bytes) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

pub(super) async fn agent_report(
    State(c): Ctl,
    Agent(who): Agent,
    Json(r): Json<AgentReport>,
) -> ApiResult<StatusCode> {
    c.agent_report(&who, r).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- organisations -------------------------------------------------------

pub(super) async fn list_orgs(State(c): Ctl, Admin(actor): Admin) -> ApiResult<Response> {
    Ok(axum::Json(c.list_orgs(&actor).await?).into_response())
}

pub(super) async fn create_org(
    State(c): Ctl,
    Admin(actor): Admin,
    Json(req): Json<CreateOrg>,
) -> ApiResult<Response> {
    let o = c.create_org(&actor, req).await?;
    Ok((StatusCode::CREATED, axum::Json(o)).into_response())
}

pub(super) async fn show_org(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(c.org(&actor, &name("organisation", &n)?).await?).into_response())
}

pub(super) async fn update_org(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
    Json(req): Json<UpdateOrg>,
) -> ApiResult<Response> {
    let o = c
        .update_org(&actor, &name("organisation", &n)?, req)
        .await?;
    Ok(axum::Json(o).into_response())
}

pub(super) async fn delete_org(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
) -> ApiResult<StatusCode> {
    c.delete_org(&actor, &name("organisation", &n)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- policy --------------------------------------------------------------

pub(super) async fn policy(State(c): Ctl, Admin(actor): Admin) -> ApiResult<Response> {
    Ok(axum::Json(c.policy(&actor).await?).into_response())
}

pub(super) async fn create_rule(
    State(c): Ctl,
    Admin(actor): Admin,
    Json(req): Json<CreateRule>,
) -> ApiResult<Response> {
    let r = c.create_rule(&actor, req).await?;
    Ok((StatusCode::CREATED, axum::Json(r)).into_response())
}

fn rule_id(raw: &str) -> ApiResult<u64> {
    raw.parse()
        .map_err(|_| Error::NotFound(format!("no rule {raw:?}; rules are numbered")))
}

pub(super) async fn show_rule(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(c.rule(&actor, rule_id(&id)?).await?).into_response())
}

pub(super) async fn delete_rule(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    c.delete_rule(&actor, rule_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn create_service(
    State(c): Ctl,
    Admin(actor): Admin,
    Json(req): Json<Service>,
) -> ApiResult<Response> {
    let s = c.create_service(&actor, req).await?;
    Ok((StatusCode::CREATED, axum::Json(s)).into_response())
}

/// A service by name alone (`/services/{name}`: the one of that name the
/// token sees) or within its organisation (`/services/{org}/{name}`).
fn service_ref(org: Option<&str>, n: &str) -> ApiResult<ServiceRef> {
    let r = ServiceRef {
        org: org.map(|o| name("organisation", o)).transpose()?,
        name: name("service", n)?,
    };
    Ok(r)
}

pub(super) async fn show_service(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(c.service(&actor, &service_ref(None, &n)?).await?).into_response())
}

pub(super) async fn show_org_service(
    State(c): Ctl,
    Admin(actor): Admin,
    Path((o, n)): Path<(String, String)>,
) -> ApiResult<Response> {
    Ok(axum::Json(c.service(&actor, &service_ref(Some(&o), &n)?).await?).into_response())
}

pub(super) async fn delete_service(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
) -> ApiResult<StatusCode> {
    c.delete_service(&actor, &service_ref(None, &n)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn delete_org_service(
    State(c): Ctl,
    Admin(actor): Admin,
    Path((o, n)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    c.delete_service(&actor, &service_ref(Some(&o), &n)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn check_policy(
    State(c): Ctl,
    Admin(actor): Admin,
    Query(q): Query<CheckQuery>,
) -> ApiResult<Response> {
    Ok(axum::Json(c.check(&actor, q).await?).into_response())
}

// ----- regions -------------------------------------------------------------

pub(super) async fn list_regions(State(c): Ctl, Admin(actor): Admin) -> ApiResult<Response> {
    Ok(axum::Json(c.list_regions(&actor)).into_response())
}

pub(super) async fn create_region(
    State(c): Ctl,
    Admin(actor): Admin,
    Json(req): Json<CreateRegion>,
) -> ApiResult<Response> {
    let r = c.create_region(&actor, req).await?;
    Ok((StatusCode::CREATED, axum::Json(r)).into_response())
}

pub(super) async fn show_region(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(c.region(&actor, &name("region", &n)?)?).into_response())
}

pub(super) async fn delete_region(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
) -> ApiResult<StatusCode> {
    c.delete_region(&actor, &name("region", &n)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- sites ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SiteFilter {
    region: Option<Name>,
    state: Option<SiteState>,
}

pub(super) async fn list_sites(
    State(c): Ctl,
    Admin(actor): Admin,
    Query(f): Query<SiteFilter>,
) -> ApiResult<Response> {
    Ok(axum::Json(c.list_sites(&actor, f.region.as_ref(), f.state)).into_response())
}

pub(super) async fn create_site(
    State(c): Ctl,
    Admin(actor): Admin,
    Json(req): Json<CreateSite>,
) -> ApiResult<Response> {
    let created = c.add_site(&actor, req).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

pub(super) async fn show_site(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(c.site(&actor, &name("site", &n)?)?).into_response())
}

pub(super) async fn update_site(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
    Json(req): Json<UpdateSite>,
) -> ApiResult<Response> {
    Ok(axum::Json(c.update_site(&actor, &name("site", &n)?, req).await?).into_response())
}

pub(super) async fn delete_site(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
) -> ApiResult<StatusCode> {
    c.delete_site(&actor, &name("site", &n)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn renumber_site(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
    Json(req): Json<wardnet_common::wire::RenumberSite>,
) -> ApiResult<Response> {
    let site = name("site", &n)?;
    Ok(axum::Json(c.renumber_site(&actor, &site, req.finish).await?).into_response())
}

pub(super) async fn revoke_site(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(c.revoke_site(&actor, &name("site", &n)?).await?).into_response())
}

pub(super) async fn issue_token(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
) -> ApiResult<Response> {
    let created = c.issue_token(&actor, &name("site", &n)?).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

pub(super) async fn site_config(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(c.site_config(&actor, &name("site", &n)?)?).into_response())
}

pub(super) async fn wg_quick(
    State(c): Ctl,
    Admin(actor): Admin,
    Path(n): Path<String>,
) -> ApiResult<Response> {
    let text = c.wg_quick(&actor, &name("site", &n)?)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    limit: Option<u32>,
    before: Option<i64>,
}

pub(super) async fn audit(
    State(c): Ctl,
    Admin(actor): Admin,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::BadRequest(format!(
            "limit must be 1 to 1000, got {limit}"
        )));
    }
    Ok(axum::Json(c.audit_log(&actor, limit, q.before).await?).into_response())
}

pub(super) async fn status(State(c): Ctl, Admin(actor): Admin) -> ApiResult<Response> {
    Ok(axum::Json(c.status(&actor)).into_response())
}
