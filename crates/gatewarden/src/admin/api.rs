//! The daemon's HTTP surface: `/healthz`, `/metrics`, acknowledgement links
//! (`/ack/{token}`) and the token-protected admin API under `/api/v1`.

use super::Shared;
use super::*;
use crate::enrolment::Changed;
use crate::monitor::Command;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::{NaiveDate, TimeZone};
use config::Dur;
use domain::alert::engine::AckError;
use domain::alert::{message, token, Level, Staff};
use domain::clock::Timestamp;
use domain::presence::{BandId, Contact, Elder, Leave, Observation};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use store::StoreError;
use tokio::sync::oneshot;

type S = State<Arc<Shared>>;

/// An API error: a status and a message a person can act on.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// Enrolment writes are refused on a sync replica.
pub fn writable(sh: &Shared) -> Result<(), ApiError> {
    sh.enrolment.writable().map_err(|e| ApiError(StatusCode::CONFLICT, e.to_string()))
}

pub fn bad(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.to_string())
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::BandTaken { .. } | StoreError::Exists { .. } => StatusCode::CONFLICT,
            StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}"))
    }
}

type R<T> = Result<Json<T>, ApiError>;

pub fn router(sh: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/elders", get(list_elders).post(add_elder))
        .route("/elders/:id", get(get_elder).patch(update_elder).delete(remove_elder))
        .route("/staff", get(list_staff).post(add_staff))
        .route("/staff/:id", axum::routing::delete(remove_staff))
        .route("/ladders", get(list_ladders))
        .route("/ladders/:grid", axum::routing::put(set_ladder).delete(remove_ladder))
        .route("/leaves", get(list_leaves).post(add_leave))
        .route("/leaves/:id", axum::routing::delete(remove_leave))
        .route("/checkins", post(check_in))
        .route("/sightings/face", post(face_sighting))
        .route("/alerts", get(list_alerts))
        .route("/alerts/:id/ack", post(ack_alert))
        .route("/alerts/:id/resolve", post(resolve_alert))
        .route("/channels", get(list_channels))
        .route("/channels/:name/test", post(test_channel))
        .route("/outbox", get(list_outbox))
        .route("/outbox/:id/retry", post(retry_notification))
        .route("/presence", get(presence))
        .route("/gateways", get(list_gateways))
        .route("/wristbands/unknown", get(unknown_bands))
        .route("/residents", get(super::access::list_people).post(super::access::add_resident).layer(big()))
        .route("/people", get(super::access::list_people))
        .route("/people/:id", axum::routing::delete(super::access::forget))
        .route("/visitors", post(super::access::register_visitor).layer(big()))
        .route("/vehicles", get(super::access::list_vehicles).post(super::access::add_vehicle))
        .route("/vehicles/:plate", axum::routing::delete(super::access::remove_vehicle))
        .route("/gates/:gate/credential", post(super::access::credential))
        .route("/log", get(super::access::log))
        .route("/log/verify", get(super::access::verify_log))
        .route("/keys/rotate", post(super::access::rotate_key))
        .route("/compliance", get(super::access::compliance))
        .route("/backup", post(super::access::backup))
        .route("/me", get(super::console::me))
        .route("/roster", get(super::roster::export))
        .route("/roster/imports", post(super::roster::start))
        .route("/roster/parse", post(super::roster::parse).layer(big()))
        .route("/roster/imports/:id/rows", post(super::roster::add_rows).layer(big()))
        .route("/roster/imports/:id/commit", post(super::roster::commit))
        .route("/users", get(super::console::list_users).post(super::console::add_user))
        .route("/users/:name", axum::routing::delete(super::console::remove_user))
        .route("/audit", get(list_audit))
        .route("/qr.svg", get(super::console::qr_svg))
        .route("/photos/check", post(super::access::check_photo).layer(big()))
        .route("/elders/:id/history", get(elder_history))
        .route("/debug/clock", post(move_clock))
        .route("/debug/tick", post(tick))
        .route("/debug/panic", post(inject_panic))
        .route("/debug/hang", post(inject_hang))
        .route_layer(axum::middleware::from_fn_with_state(sh.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/ack/:token", get(ack_page).post(ack_link))
        .route("/", get(|| async { axum::response::Redirect::temporary("/console/") }))
        .route("/console/", get(super::console::index))
        .route("/console", get(|| async { axum::response::Redirect::temporary("/console/") }))
        .route("/console/app.js", get(super::console::app_js))
        .route("/console/app.css", get(super::console::app_css))
        .route("/console/login", post(super::console::login))
        .route("/console/logout", post(super::console::logout))
        .nest("/api/v1", api)
        // Everything else is a small JSON or form body: an unauthenticated
        // client cannot make the daemon buffer more than this.
        .layer(axum::extract::DefaultBodyLimit::max(SMALL_BODY))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(sh)
}

/// The body limit of every route but the few below.
pub const SMALL_BODY: usize = 256 * 1024;

/// Routes that take enrolment photos (base64 in JSON) or a roster file, all
/// behind the admin token: the roster reader's own bound is 16 MiB.
fn big() -> axum::extract::DefaultBodyLimit {
    axum::extract::DefaultBodyLimit::max(32 * 1024 * 1024)
}

/// Whether the request's `Origin` is this server (its `Host`, or `http.public_url`).
fn same_origin(sh: &Shared, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = headers.get(axum::http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let host_ok = !host.is_empty() && (origin == format!("http://{host}") || origin == format!("https://{host}"));
    host_ok || origin == sh.cfg.public_url()
}

/// Headers on every response: no framing (clickjacking of the console or an
/// ack page), scripts and everything else only from this server.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, axum::http::HeaderValue::from_static(v));
    };
    // The ack page carries its own small <style>: inline styles only, never inline scripts.
    set(h, "content-security-policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'");
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    resp
}

/// Every `/api/v1` call: the CLI's bearer token (full rights), or a console
/// session whose role allows it. Every write is then recorded in the audit log.
async fn auth(State(sh): S, headers: HeaderMap, mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use super::console::{Actor, Role};
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let by_token = given.is_some_and(|g| {
        use subtle_eq::ct_eq;
        ct_eq(g.as_bytes(), sh.admin_token.as_bytes())
    });
    // A keypad's or reader's token: credentials at its own gate, nothing else.
    if let Some((gate, _)) = given.filter(|_| !by_token).and_then(|g| sh.device_tokens.iter().find(|(_, t)| subtle_eq::ct_eq(g.as_bytes(), t.as_bytes()))) {
        if req.method() == axum::http::Method::POST && req.uri().path() == format!("/gates/{gate}/credential") {
            return next.run(req).await;
        }
        sh.metrics.reject("device_token_scope");
        return ApiError(StatusCode::FORBIDDEN, format!("this device token presents credentials at gate {gate} only")).into_response();
    }
    let actor = match by_token {
        true => Some(Actor { name: "admin-token".into(), role: Role::Admin }),
        false => super::console::session_cookie(&headers).and_then(|t| sh.sessions.actor(&t, sh.clock.now())),
    };
    // A cookie goes with every request the browser makes, whichever page asks:
    // a write on a console session must come from the console's own origin.
    if !by_token && actor.is_some() && !matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD) && !same_origin(&sh, &headers) {
        sh.metrics.reject("cross_origin_write");
        return ApiError(StatusCode::FORBIDDEN, "a console write must come from the console itself (Origin does not match)".into()).into_response();
    }
    let Some(actor) = actor else {
        let msg = match given {
            Some(_) => "wrong admin token (Authorization: Bearer …)",
            None => "not logged in: give the admin token (Authorization: Bearer …) or log in to the console",
        };
        return ApiError(StatusCode::UNAUTHORIZED, msg.into()).into_response();
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or_else(|| path.clone(), |m| route_of(m.as_str()));
    if actor.role == Role::Staff && !super::console::staff_may(&method, &path) {
        return ApiError(StatusCode::FORBIDDEN, format!("staff accounts cannot {method} {path}; ask an administrator")).into_response();
    }
    req.extensions_mut().insert(actor.clone());
    let resp = next.run(req).await;
    if audited(&method, &path) {
        let mut e = store::AuditEntry {
            id: 0,
            at: sh.clock.now(),
            actor: actor.name,
            role: actor.role.as_str().into(),
            action: format!("{method} {route}"),
            target: audit_target(&sh, &method, &path),
            status: resp.status().as_u16(),
        };
        if let Err(err) = sh.store.append_audit(&mut e) {
            tracing::error!(error = %err, "cannot write the audit log");
        }
    }
    resp
}

/// Admin writes. Not the test clock, and not devices presenting credentials
/// or faces (those are in the entry log).
fn audited(method: &axum::http::Method, path: &str) -> bool {
    *method != axum::http::Method::GET
        && *method != axum::http::Method::HEAD
        && !path.starts_with("/debug/")
        && !path.starts_with("/photos/check")
        && path != "/roster/parse"
        && !(path.starts_with("/roster/imports/") && path.ends_with("/rows"))
        && !(path.starts_with("/gates/") && path.ends_with("/credential"))
        && path != "/sightings/face"
}

/// The route with its ids elided, from the router's own template:
/// `/alerts/:id/ack` → `/alerts/…/ack`.
fn route_of(matched: &str) -> String {
    let route = matched.strip_prefix("/api/v1").unwrap_or(matched);
    route.split('/').map(|seg| if seg.starts_with(':') { "…" } else { seg }).collect::<Vec<_>>().join("/")
}

/// What a write touched. `forget` leaves no personal data behind, so the
/// person's id is replaced by a keyed hash: it proves the erasure to someone
/// who knows the id, and names no one to anyone else.
fn audit_target(sh: &Shared, method: &axum::http::Method, path: &str) -> String {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("DELETE", ["people", id]) => {
            let id = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
            format!("person (forgotten) {}", crate::gate::task::secret_hash(&sh.credential_key, domain::gate::log::Credential::Pin, &format!("forget:{id}")))
        }
        // A plate is personal data: keyed, like a forgotten person's id.
        (_, ["vehicles", plate, ..]) => {
            let plate = percent_encoding::percent_decode_str(plate).decode_utf8_lossy();
            format!("vehicles {}", crate::gate::task::secret_hash(&sh.credential_key, domain::gate::log::Credential::Pin, &format!("plate:{plate}")))
        }
        (_, [kind, id, ..]) => format!("{kind} {}", percent_encoding::percent_decode_str(id).decode_utf8_lossy()),
        (_, [kind]) => kind.to_string(),
        _ => String::new(),
    }
}

mod subtle_eq {
    /// Constant-time equality, so the token cannot be guessed byte by byte.
    pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

async fn healthz(State(sh): S) -> Response {
    let store_ok = sh.store.is_healthy();
    let mqtt = sh.metrics.mqtt_connected.get() == 1;
    let outbox = sh.store.outbox().unwrap_or_default();
    let pending = outbox.iter().filter(|n| n.delivery == crate::alert::outbox::Delivery::Pending).count();
    let failed = outbox.len() - pending;
    let cluster = sh.cluster.read().unwrap_or_else(|e| e.into_inner()).clone();
    let under_attack = sh.cfg.cluster.is_some() && cluster.under_attack(chrono::Utc::now().timestamp_millis());
    let clock = sh.clock_view.read().unwrap_or_else(|e| e.into_inner()).clone();
    let writable = sh.metrics.store_writable.get() == 1;
    let tasks = sh.metrics.heartbeats.ages();
    let stale: Vec<&String> = tasks.iter().filter(|(_, age)| **age > crate::telemetry::STALE_AFTER.as_secs_f64()).map(|(t, _)| t).collect();
    let status = if !store_ok {
        "failing"
    } else if !mqtt || failed > 0 || under_attack || !writable || !stale.is_empty() || clock.degraded(sh.clock.now()) {
        "degraded"
    } else {
        "ok"
    };
    let body = json!({
        "status": status,
        "store": store_ok,
        "store_writable": writable,
        "alerts_uncommitted": sh.metrics.alerts_uncommitted.get(),
        "tasks": tasks.iter().map(|(t, age)| (t.clone(), json!({ "heartbeat_age_s": (age * 10.0).round() / 10.0 }))).collect::<serde_json::Map<_, _>>(),
        "stale_tasks": stale,
        "mqtt_connected": mqtt,
        "outbox_pending": pending,
        "outbox_failed": failed,
        "uptime_s": sh.started.elapsed().as_secs(),
        "clock": clock,
        "version": env!("CARGO_PKG_VERSION"),
        "cluster": sh.cfg.cluster.as_ref().map(|_| cluster),
    });
    let code = if store_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    #[serde(default = "default_audit_limit")]
    limit: usize,
}

fn default_audit_limit() -> usize {
    200
}

/// `GET /api/v1/audit?limit=N`: newest first.
async fn list_audit(State(sh): S, Query(q): Query<AuditQuery>) -> R<Vec<store::AuditEntry>> {
    Ok(Json(sh.store.list_audit(q.limit)?))
}

/// `GET /api/v1/elders/:id/history`: the bounded window of recent sightings.
async fn elder_history(State(sh): S, Path(id): Path<String>) -> R<serde_json::Value> {
    find_elder(&sh, &id)?;
    flush_presence(&sh).await?;
    Ok(Json(json!({ "elder": id, "window": sh.cfg.presence.history_window.to_string(), "sightings": sh.store.history(&id)? })))
}

async fn metrics(State(sh): S) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], sh.metrics.encode())
}

// ---- elders ----

fn parse_bands(raw: &[String]) -> Result<Vec<BandId>, ApiError> {
    raw.iter().map(|b| b.parse::<BandId>().map_err(|e| bad(e.to_string()))).collect()
}

fn parse_contacts(raw: &[String]) -> Result<Vec<Contact>, ApiError> {
    raw.iter().map(|c| c.parse::<Contact>().map_err(bad)).collect()
}

fn check_phone(p: &Option<String>) -> Result<(), ApiError> {
    match p {
        Some(p) if !domain::presence::is_phone(p) => Err(bad(format!("invalid phone number {p:?}"))),
        _ => Ok(()),
    }
}

async fn add_elder(State(sh): S, Json(i): Json<ElderInput>) -> R<Elder> {
    writable(&sh)?;
    if i.name.trim().is_empty() {
        return Err(bad("name must not be empty"));
    }
    check_phone(&i.phone)?;
    let id = match i.id {
        Some(id) if id.trim().is_empty() || id.contains(['/', ' ']) => return Err(bad(format!("invalid elder id {id:?}"))),
        Some(id) => id,
        None => format!("E{:05}", sh.store.next_id()?),
    };
    let e = Elder {
        id,
        name: i.name.trim().to_string(),
        building: i.building,
        unit: i.unit,
        room: i.room,
        grid: i.grid,
        phone: i.phone,
        bands: parse_bands(&i.bands)?,
        emergency_contacts: parse_contacts(&i.contacts)?,
        categories: i.categories,
        notes: i.notes,
        enrolled_at: sh.clock.now(),
        absence_after_secs: absence_after(i.absence_after.as_deref())?,
    };
    sh.store.put_elder(&e, true)?;
    sh.enrolment.changed(Changed::Elder(e.id.clone())).await?;
    tracing::info!(elder = %e.id, bands = e.bands.len(), "elder enrolled");
    Ok(Json(e))
}

/// An elder's own absence threshold ("24h", "3d"); "" or "default" clears it.
fn absence_after(text: Option<&str>) -> Result<Option<u64>, ApiError> {
    match text.map(str::trim) {
        None | Some("") | Some("default") => Ok(None),
        Some(t) => {
            let d = humantime::parse_duration(t).map_err(|e| bad(format!("absence_after {t:?}: {e} (e.g. \"24h\", \"3d\")")))?;
            if d < std::time::Duration::from_secs(600) || d > std::time::Duration::from_secs(60 * 86400) {
                return Err(bad(format!("absence_after {t:?} must be between 10m and 60d")));
            }
            Ok(Some(d.as_secs()))
        }
    }
}

fn find_elder(sh: &Shared, id: &str) -> Result<Elder, ApiError> {
    sh.store.get_elder(id)?.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no elder {id:?} (see `gatewarden elder list`)")))
}

/// Presence is written behind; ask the monitor to flush so an answer is current.
async fn flush_presence(sh: &Shared) -> Result<(), ApiError> {
    let (tx, rx) = oneshot::channel();
    sh.command(Command::Flush(tx)).await?;
    rx.await.map_err(|_| anyhow::anyhow!("the daemon is shutting down"))?;
    Ok(())
}

async fn get_elder(State(sh): S, Path(id): Path<String>) -> R<serde_json::Value> {
    let e = find_elder(&sh, &id)?;
    flush_presence(&sh).await?;
    let last = sh.store.get_last_seen(&id)?;
    Ok(Json(json!({ "elder": e, "last_seen": last, "leaves": sh.store.list_leaves(Some(&id))? })))
}

async fn list_elders(State(sh): S) -> R<Vec<Elder>> {
    Ok(Json(sh.store.list_elders()?))
}

async fn update_elder(State(sh): S, Path(id): Path<String>, Json(p): Json<ElderPatch>) -> R<Elder> {
    writable(&sh)?;
    let mut e = find_elder(&sh, &id)?;
    if let Some(n) = p.name {
        if n.trim().is_empty() {
            return Err(bad("name must not be empty"));
        }
        e.name = n;
    }
    if p.phone.is_some() {
        check_phone(&p.phone)?;
        e.phone = p.phone;
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = p.$f { e.$f = v; } )* };
    }
    set!(building, unit, room, grid, categories, notes);
    for b in parse_bands(&p.remove_bands)? {
        if !e.bands.contains(&b) {
            return Err(bad(format!("elder {id} has no wristband {b}")));
        }
        e.bands.retain(|x| *x != b);
    }
    for b in parse_bands(&p.add_bands)? {
        if !e.bands.contains(&b) {
            e.bands.push(b);
        }
    }
    if let Some(c) = p.contacts {
        e.emergency_contacts = parse_contacts(&c)?;
    }
    if let Some(a) = p.absence_after {
        e.absence_after_secs = absence_after(Some(&a))?;
    }
    sh.store.put_elder(&e, false)?;
    sh.enrolment.changed(Changed::Elder(id)).await?;
    Ok(Json(e))
}

async fn remove_elder(State(sh): S, Path(id): Path<String>) -> R<Elder> {
    writable(&sh)?;
    let e = sh.store.remove_elder(&id)?;
    sh.enrolment.changed(Changed::ElderRemoved(id)).await?;
    Ok(Json(e))
}

// ---- staff and ladders ----

async fn add_staff(State(sh): S, Json(s): Json<Staff>) -> R<Staff> {
    writable(&sh)?;
    if s.id.trim().is_empty() || s.name.trim().is_empty() {
        return Err(bad("staff need an id and a name"));
    }
    check_phone(&s.phone)?;
    sh.store.put_staff(&s)?;
    sh.enrolment.changed(Changed::Staff(s.id.clone())).await?;
    Ok(Json(s))
}

async fn list_staff(State(sh): S) -> R<Vec<Staff>> {
    Ok(Json(sh.store.list_staff()?))
}

async fn remove_staff(State(sh): S, Path(id): Path<String>) -> R<Staff> {
    writable(&sh)?;
    let s = sh.store.remove_staff(&id)?;
    sh.enrolment.changed(Changed::Staff(id)).await?;
    Ok(Json(s))
}

async fn list_ladders(State(sh): S) -> R<serde_json::Value> {
    let stored: Vec<_> = sh.store.list_ladders()?.into_iter().map(|(g, l)| json!({ "grid": g, "levels": l })).collect();
    Ok(Json(json!({ "default": sh.ladder("\u{0}none"), "grids": stored })))
}

async fn set_ladder(State(sh): S, Path(grid): Path<String>, Json(levels): Json<Vec<Level>>) -> R<Vec<Level>> {
    writable(&sh)?;
    if levels.is_empty() {
        return Err(bad("a ladder needs at least one level"));
    }
    for (i, l) in levels.iter().enumerate() {
        if l.channels.is_empty() {
            return Err(bad(format!("level {} ({}) has no channel", i + 1, l.name)));
        }
        for c in &l.channels {
            if !sh.senders.contains_key(c) {
                let known: Vec<_> = sh.senders.keys().cloned().collect();
                return Err(bad(format!("unknown channel {c:?}; configured channels: {known:?}")));
            }
        }
        for s in &l.staff {
            if sh.store.get_staff(s)?.is_none() {
                return Err(bad(format!("unknown staff member {s:?}; add them with `gatewarden staff add`")));
            }
        }
    }
    sh.store.put_ladder(&grid, &levels)?;
    sh.enrolment.changed(Changed::Ladder(grid)).await?;
    Ok(Json(levels))
}

async fn remove_ladder(State(sh): S, Path(grid): Path<String>) -> R<serde_json::Value> {
    writable(&sh)?;
    sh.store.remove_ladder(&grid)?;
    sh.enrolment.changed(Changed::Ladder(grid.clone())).await?;
    Ok(Json(json!({ "removed": grid })))
}

// ---- leaves, check-ins, face sightings ----

/// RFC 3339, or a date (taken as midnight China time).
/// A time in a request that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid time {0:?}: use YYYY-MM-DD or RFC 3339")]
pub struct TimeError(String);

pub fn parse_time(s: &str) -> Result<Timestamp, TimeError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| TimeError(s.to_string()))?;
    let cst = domain::clock::cst();
    Ok(cst.from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight")).single().expect("fixed offset").with_timezone(&chrono::Utc))
}

async fn add_leave(State(sh): S, Json(i): Json<LeaveInput>) -> R<Leave> {
    writable(&sh)?;
    find_elder(&sh, &i.elder)?;
    let from = match &i.from {
        Some(f) => parse_time(f).map_err(bad)?,
        None => sh.clock.now(),
    };
    let until = parse_time(&i.until).map_err(bad)?;
    if until <= from {
        return Err(bad("a leave must end after it starts"));
    }
    let l = Leave { id: sh.store.next_id()?, elder: i.elder.clone(), from, until, note: i.note, created_by: i.by };
    sh.store.put_leave(&l)?;
    sh.enrolment.changed(Changed::Leave { id: l.id, elder: i.elder }).await?;
    Ok(Json(l))
}

#[derive(serde::Deserialize)]
struct ElderQuery {
    elder: Option<String>,
}

async fn list_leaves(State(sh): S, Query(q): Query<ElderQuery>) -> R<Vec<Leave>> {
    Ok(Json(sh.store.list_leaves(q.elder.as_deref())?))
}

async fn remove_leave(State(sh): S, Path(id): Path<u64>) -> R<Leave> {
    writable(&sh)?;
    let l = sh.store.remove_leave(id)?;
    sh.enrolment.changed(Changed::Leave { id, elder: l.elder.clone() }).await?;
    Ok(Json(l))
}

async fn observe(sh: &Shared, obs: Observation) -> R<serde_json::Value> {
    let (tx, rx) = oneshot::channel();
    sh.command(Command::Observe(obs, tx)).await?;
    let events = rx.await.map_err(|_| anyhow::anyhow!("the daemon is shutting down"))?;
    Ok(Json(json!({ "events": events })))
}

async fn check_in(State(sh): S, Json(i): Json<CheckInInput>) -> R<serde_json::Value> {
    find_elder(&sh, &i.elder)?;
    if i.by.trim().is_empty() {
        return Err(bad("say who visited (--by)"));
    }
    observe(&sh, Observation::CheckIn { elder: i.elder, by: i.by, note: i.note, at: sh.clock.now() }).await
}

/// The hook for gate face recognition (issue #3): a recognised face is a sighting.
async fn face_sighting(State(sh): S, Json(i): Json<FaceSightingInput>) -> R<serde_json::Value> {
    find_elder(&sh, &i.elder)?;
    observe(&sh, Observation::Face { elder: i.elder, gate: i.gate, at: sh.clock.now() }).await
}

// ---- alerts, channels, outbox ----

#[derive(serde::Deserialize)]
struct AlertQuery {
    #[serde(default)]
    all: bool,
}

async fn list_alerts(State(sh): S, Query(q): Query<AlertQuery>) -> R<Vec<domain::alert::Alert>> {
    let all = sh.store.list_alerts()?;
    Ok(Json(all.into_iter().filter(|a| q.all || a.state != domain::alert::AlertState::Resolved).collect()))
}

fn outcome(text: Option<&str>) -> Result<Option<domain::alert::Outcome>, ApiError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => t.parse().map(Some).map_err(bad),
    }
}

/// Staff notes are free text from a phone: bounded.
const MAX_NOTE: usize = 500;

async fn do_ack(sh: &Shared, id: u64, by: String, outcome: Option<domain::alert::Outcome>, note: String) -> Result<domain::alert::Alert, ApiError> {
    if note.chars().count() > MAX_NOTE {
        return Err(bad(format!("the note is longer than {MAX_NOTE} characters")));
    }
    let (tx, rx) = oneshot::channel();
    sh.command(Command::Ack { id, by, outcome, note, reply: tx }).await?;
    answered(rx).await
}

async fn answered(rx: oneshot::Receiver<Result<domain::alert::Alert, AckError>>) -> Result<domain::alert::Alert, ApiError> {
    // Answered once stored; while the store refuses writes the answer waits.
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), rx).await.map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the acknowledgement is not stored yet: the box's store refuses writes (a full disk?). It is stored when the disk recovers unless the box restarts first; try again".into(),
        )
    })?;
    match answer.map_err(|_| anyhow::anyhow!("the daemon is shutting down"))? {
        Ok(a) => Ok(a),
        Err(e @ AckError::NotFound(_)) => Err(ApiError(StatusCode::NOT_FOUND, e.to_string())),
        Err(e) => Err(ApiError(StatusCode::CONFLICT, e.to_string())),
    }
}

async fn ack_alert(State(sh): S, Path(id): Path<u64>, Json(i): Json<AckInput>) -> R<domain::alert::Alert> {
    if i.by.trim().is_empty() {
        return Err(bad("say who acknowledges (--by)"));
    }
    Ok(Json(do_ack(&sh, id, i.by, outcome(i.outcome.as_deref())?, i.note).await?))
}

async fn resolve_alert(State(sh): S, Path(id): Path<u64>, Json(i): Json<super::ResolveInput>) -> R<domain::alert::Alert> {
    if i.by.trim().is_empty() || i.reason.trim().is_empty() {
        return Err(bad("say who resolves (--by) and why (--reason)"));
    }
    if i.reason.chars().count() > MAX_NOTE {
        return Err(bad(format!("the reason is longer than {MAX_NOTE} characters")));
    }
    writable(&sh)?;
    let (tx, rx) = oneshot::channel();
    sh.command(Command::Resolve { id, by: i.by.trim().to_string(), reason: i.reason, reply: tx }).await?;
    Ok(Json(answered(rx).await?))
}

async fn list_channels(State(sh): S) -> R<Vec<serde_json::Value>> {
    Ok(Json(sh.cfg.alert.channels.iter().map(|c| json!({ "name": c.name, "kind": c.kind, "rate_per_minute": c.rate_per_minute() })).collect()))
}

async fn test_channel(State(sh): S, Path(name): Path<String>) -> R<serde_json::Value> {
    let s = sh
        .senders
        .get(&name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no channel {name:?}; configured: {:?}", sh.senders.keys().collect::<Vec<_>>())))?;
    let now = sh.clock.now();
    let m = message::test_message(&sh.cfg.site, sh.cfg.site_name.as_deref().unwrap_or(&sh.cfg.site), sh.cfg.language, now);
    let outcome = s.send(&m, now).await;
    use domain::alert::channel::Outcome;
    let (ok, detail) = match outcome {
        Outcome::Delivered => (true, "delivered".to_string()),
        Outcome::Retry(e) => (false, format!("temporary failure: {e}")),
        Outcome::Permanent(e) => (false, format!("permanent failure: {e}")),
    };
    sh.metrics.delivery(&name, if ok { "delivered" } else { "test_failed" });
    if ok {
        Ok(Json(json!({ "channel": name, "result": detail })))
    } else {
        Err(ApiError(StatusCode::BAD_GATEWAY, format!("channel {name}: {detail}")))
    }
}

async fn list_outbox(State(sh): S) -> R<Vec<crate::alert::outbox::Notification>> {
    Ok(Json(sh.store.outbox()?))
}

async fn retry_notification(State(sh): S, Path(id): Path<u64>) -> R<crate::alert::outbox::Notification> {
    let n = sh.store.retry_notification(id, sh.clock.now())?;
    sh.outbox_wake.notify_waiters();
    Ok(Json(n))
}

// ---- presence ----

async fn presence(State(sh): S) -> R<Vec<PresenceRow>> {
    flush_presence(&sh).await?;
    let now = sh.clock.now();
    let leaves = sh.store.list_leaves(None)?;
    let mut rows: Vec<PresenceRow> = Vec::new();
    for e in sh.store.list_elders()? {
        let l = sh.store.get_last_seen(&e.id)?;
        let since = l.as_ref().map(|l| l.at).unwrap_or(e.enrolled_at);
        rows.push(PresenceRow {
            address: e.address(),
            on_leave: leaves.iter().any(|lv| lv.elder == e.id && lv.from <= now && now < lv.until),
            elder: e.id,
            name: e.name,
            grid: e.grid,
            last_seen: l.as_ref().map(|l| l.at),
            source: l.as_ref().map(|l| l.source.as_str().to_string()),
            place: l.as_ref().map(|l| sh.cfg.place_name(&l.place)),
            absence_after_hours: sh.cfg.alert.absence_after_for(e.absence_after_secs, &e.categories).unwrap_or(sh.cfg.alert.absence_after()).as_secs_f64()
                / 3600.0,
            battery: l.as_ref().and_then(|l| l.battery),
            unseen_hours: Some((now - since).num_minutes() as f64 / 60.0),
        });
    }
    // Longest unseen first: the people someone should check on.
    rows.sort_by(|a, b| b.unseen_hours.partial_cmp(&a.unseen_hours).unwrap_or(std::cmp::Ordering::Equal));
    Ok(Json(rows))
}

/// The gateway inventory: every gateway heard or named in the config, with
/// its display name, when it was last heard and whether it is offline.
async fn list_gateways(State(sh): S) -> R<Vec<serde_json::Value>> {
    flush_presence(&sh).await?;
    let offline: std::collections::BTreeSet<String> = sh
        .store
        .list_alerts()?
        .into_iter()
        .filter(|a| a.state != domain::alert::AlertState::Resolved && a.kind == domain::alert::AlertKind::GatewayOffline)
        .map(|a| a.subject.id().to_string())
        .collect();
    let mut rows: std::collections::BTreeMap<String, serde_json::Value> = std::collections::BTreeMap::new();
    for (id, heard) in sh.store.list_gateways()? {
        rows.insert(id.clone(), json!({ "id": id, "name": sh.cfg.place_name(&id), "last_heard": heard, "offline": offline.contains(&id) }));
    }
    for (id, name) in &sh.cfg.presence.gateway_names {
        let id = domain::presence::gateway_id(id);
        let off = offline.contains(&id);
        rows.entry(id.clone()).or_insert_with(|| json!({ "id": id, "name": name, "last_heard": null, "offline": off }));
    }
    Ok(Json(rows.into_values().collect()))
}

async fn unknown_bands(State(sh): S) -> R<Vec<domain::presence::UnknownBand>> {
    let mut v = sh.store.list_unknown()?;
    v.sort_by_key(|b| std::cmp::Reverse(b.last_seen));
    Ok(Json(v))
}

// ---- test clock ----

async fn move_clock(State(sh): S, Json(i): Json<ClockInput>) -> R<serde_json::Value> {
    if !sh.clock.is_adjustable() {
        return Err(ApiError(StatusCode::FORBIDDEN, "the clock is fixed; set [debug] manual_clock = true (tests only)".into()));
    }
    let now = match (i.advance, i.set, i.step) {
        (Some(a), None, None) => sh.clock.advance(Dur::parse(&a).map_err(bad)?.get()),
        (None, Some(s), None) => sh.clock.set(parse_time(&s).map_err(bad)?),
        (None, None, Some(s)) => {
            let (sign, d) = s.strip_prefix('-').map_or((1, s.as_str()), |d| (-1, d));
            sh.clock.step(sign * Dur::parse(d).map_err(bad)?.get().as_millis() as i64)
        }
        _ => return Err(bad("give exactly one of `advance`, `set` or `step`")),
    }
    .expect("adjustable");
    run_tick(&sh).await?;
    Ok(Json(json!({ "now": now })))
}

async fn run_tick(sh: &Shared) -> Result<(), ApiError> {
    let (tx, rx) = oneshot::channel();
    sh.command(Command::Tick(tx)).await?;
    rx.await.map_err(|_| anyhow::anyhow!("the daemon is shutting down"))?;
    Ok(())
}

/// Fault injection for the supervision test: the monitor panics.
async fn inject_panic(State(sh): S) -> R<serde_json::Value> {
    if !sh.clock.is_adjustable() {
        return Err(ApiError(StatusCode::FORBIDDEN, "fault injection is for tests; set [debug] manual_clock = true".into()));
    }
    sh.command(Command::Panic).await?;
    Ok(Json(json!({ "injected": "monitor" })))
}

#[derive(serde::Deserialize)]
struct HangInput {
    secs: u64,
}

/// Fault injection for tests: block the monitor's thread, as a hung native call would.
async fn inject_hang(State(sh): S, Json(i): Json<HangInput>) -> R<serde_json::Value> {
    if !sh.clock.is_adjustable() {
        return Err(ApiError(StatusCode::FORBIDDEN, "fault injection is for tests; set [debug] manual_clock = true".into()));
    }
    sh.command(Command::Hang(std::time::Duration::from_secs(i.secs.min(120)))).await?;
    Ok(Json(json!({ "injected": "monitor", "secs": i.secs.min(120) })))
}

async fn tick(State(sh): S) -> R<serde_json::Value> {
    run_tick(&sh).await?;
    Ok(Json(json!({ "now": sh.clock.now() })))
}

// ---- acknowledgement links (opened on a phone) ----

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"zh\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><style>body{{font-family:sans-serif;max-width:30em;margin:2em auto;padding:0 1em}}\
         button{{font-size:1.2em;padding:.6em 1.2em}}input{{font-size:1.1em;padding:.4em;width:100%}}</style></head>\
         <body><h2>{title}</h2>{body}</body></html>"
    ))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Per-client budget for `/ack`: enough for a phone, far too few to guess.
const ACK_PER_MINUTE: usize = 20;

/// Sliding-window limit per client address, bounded in memory.
#[derive(Default)]
pub struct AckLimiter(std::sync::Mutex<HashMap<std::net::IpAddr, std::collections::VecDeque<std::time::Instant>>>);

impl AckLimiter {
    /// Whether `ip` may make another request now (and count it).
    pub fn allow(&self, ip: std::net::IpAddr) -> bool {
        let now = std::time::Instant::now();
        let window = std::time::Duration::from_secs(60);
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 10_000 {
            // A flood of addresses: forget the quiet ones first.
            m.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let q = m.entry(ip).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        if q.len() >= ACK_PER_MINUTE {
            return false;
        }
        q.push_back(now);
        true
    }
}

/// One answer for every bad link, whatever the reason, so the page tells an
/// attacker nothing about how close a guess was.
fn invalid_link() -> Response {
    (StatusCode::FORBIDDEN, page("链接无效 / Invalid link", "<p>此链接无效或已过期。/ This link is invalid or has expired.</p>")).into_response()
}

fn too_many() -> Response {
    (StatusCode::TOO_MANY_REQUESTS, page("请稍后再试 / Too many requests", "<p>请一分钟后再试。/ Try again in a minute.</p>")).into_response()
}

/// Why a link was refused.
enum LinkRefused {
    /// Malformed, forged, expired, or for another episode: one answer for all.
    Invalid,
    Resolved {
        id: u64,
        when: String,
    },
}

impl IntoResponse for LinkRefused {
    fn into_response(self) -> Response {
        match self {
            LinkRefused::Invalid => invalid_link(),
            LinkRefused::Resolved { id, when } => {
                (StatusCode::CONFLICT, page("告警已结束 / Already resolved", &format!("<p>#{id} — {}</p>", esc(&when)))).into_response()
            }
        }
    }
}

/// The alert a link may act on: signed by this box, unexpired, for this
/// very episode, and not yet resolved.
fn linked_alert(sh: &Shared, tok: &str) -> Result<(token::AckClaim, domain::alert::Alert), LinkRefused> {
    let claim = token::verify(&sh.ack_secret, tok, sh.clock.now()).map_err(|e| {
        tracing::info!(reason = %e, "acknowledgement link refused");
        LinkRefused::Invalid
    })?;
    let alert = match sh.store.get_alert(claim.alert) {
        Ok(Some(a)) if token::episode_of(a.opened_at) == claim.episode => a,
        _ => {
            tracing::warn!(alert = claim.alert, "a signed acknowledgement link names another episode");
            return Err(LinkRefused::Invalid);
        }
    };
    if alert.state == domain::alert::AlertState::Resolved {
        let when = alert.resolved_at.map(domain::clock::local_minute).unwrap_or_default();
        return Err(LinkRefused::Resolved { id: alert.id, when });
    }
    Ok((claim, alert))
}

/// What the person on the phone needs to see: the alert, and for an elder
/// their name and address, so they know where to go.
fn describe(sh: &Shared, a: &domain::alert::Alert) -> String {
    let mut s = format!("<p>#{} {}</p>", a.id, esc(a.kind.as_str()));
    match &a.subject {
        domain::alert::Subject::Elder(id) => match sh.store.get_elder(id).ok().flatten() {
            Some(e) => s.push_str(&format!("<p>{} · {}</p>", esc(&e.name), esc(&e.address()))),
            None => s.push_str(&format!("<p>{}</p>", esc(id))),
        },
        other => s.push_str(&format!("<p>{}</p>", esc(other.id()))),
    }
    if let (Some(by), domain::alert::AlertState::Acknowledged) = (&a.acked_by, a.state) {
        s.push_str(&format!("<p>已由 {} 确认 / acknowledged by {}</p>", esc(by), esc(by)));
    }
    if let Some(o) = a.outcome {
        s.push_str(&format!("<p>处理结果 / Outcome: {} / {}</p>", o.zh(), o.en()));
    }
    s
}

/// GET shows a confirmation form, so that link previews in chat apps cannot
/// acknowledge an alert by merely fetching the URL.
async fn ack_page(State(sh): S, super::server::ClientIp(client): super::server::ClientIp, Path(tok): Path<String>) -> Response {
    if !sh.ack_limit.allow(client) {
        return too_many();
    }
    match linked_alert(&sh, &tok) {
        Err(r) => r.into_response(),
        Ok((_, a)) => page(
            "确认告警 / Acknowledge",
            &format!(
                "{}<form method=\"post\"><p><label>您的姓名 / Your name<br><input name=\"by\" required></label></p>\
                 <p><label>处理结果 / Outcome<br><select name=\"outcome\">{}</select></label></p>\
                 <p><label>备注 / Note<br><textarea name=\"note\" maxlength=\"500\" rows=\"3\"></textarea></label></p>\
                 <button type=\"submit\">确认已处理 / Acknowledge</button></form>",
                describe(&sh, &a),
                domain::alert::Outcome::ALL.iter().map(|o| format!("<option value=\"{}\">{} / {}</option>", o.as_str(), o.zh(), o.en())).collect::<String>()
            ),
        )
        .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct AckForm {
    #[serde(default)]
    by: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    note: String,
}

async fn ack_link(State(sh): S, super::server::ClientIp(client): super::server::ClientIp, Path(tok): Path<String>, Form(f): Form<AckForm>) -> Response {
    if !sh.ack_limit.allow(client) {
        return too_many();
    }
    let (claim, _) = match linked_alert(&sh, &tok) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let by = if f.by.trim().is_empty() { format!("link (level {})", claim.level + 1) } else { format!("{} (link)", f.by.trim()) };
    let outcome = match outcome(Some(&f.outcome)) {
        Ok(o) => o,
        Err(ApiError(code, msg)) => return (code, page("未能确认 / Not acknowledged", &esc(&msg))).into_response(),
    };
    match do_ack(&sh, claim.alert, by.clone(), outcome, f.note).await {
        Ok(a) => page("已确认 / Acknowledged", &format!("{}<p>{}</p>", describe(&sh, &a), esc(&by))).into_response(),
        Err(ApiError(code, msg)) => (code, page("未能确认 / Not acknowledged", &esc(&msg))).into_response(),
    }
}
