//! Admin API for gate access: residents (with face enrolment and consent),
//! visitors (ID-checked passes with PIN and QR), credentials from readers,
//! and the entry log (query, CSV, verify).

use super::api::{bad, ApiError};
use super::Shared;
use crate::enrolment::Changed;
use crate::gate::task::{secret_hash, GateMsg, VisionCmd, QR_PREFIX};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use domain::gate::idcard::IdNumber;
use domain::gate::log::{self as elog, Credential};
use domain::gate::policy::{Person, PersonKind, Vehicle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use store::{Consent, PersonRecord};
use tokio::sync::oneshot;
use vision_protocol::EnrolResult;

type S = State<Arc<Shared>>;
type R<T> = Result<Json<T>, ApiError>;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentInput {
    pub by: String,
    pub how: String,
    #[serde(default = "ConsentInput::default_purpose")]
    pub purpose: String,
}
impl ConsentInput {
    pub fn default_purpose() -> String {
        "小区门禁通行 / gate access to the compound".into()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidentInput {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub unit: String,
    /// The elder record this resident is (their face counts as a sighting).
    #[serde(default)]
    pub elder: Option<String>,
    /// JPEG/PNG, base64.
    #[serde(default)]
    pub photos: Vec<String>,
    #[serde(default)]
    pub pin: Option<String>,
    #[serde(default)]
    pub cards: Vec<String>,
    #[serde(default)]
    pub consent: Option<ConsentInput>,
    /// Put on the deny list instead of letting in.
    #[serde(default)]
    pub deny: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisitorInput {
    pub name: String,
    pub id_number: String,
    pub host_unit: String,
    /// e.g. "4h"
    pub valid_for: String,
    #[serde(default)]
    pub photo: Option<String>,
    #[serde(default)]
    pub plate: Option<String>,
    #[serde(default)]
    pub consent: Option<ConsentInput>,
}

fn check_pin(pin: &str) -> Result<(), ApiError> {
    if pin.len() < 4 || pin.len() > 8 || !pin.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad("a PIN is 4 to 8 digits"));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhotoCheckInput {
    /// JPEG/PNG, base64.
    pub photo: String,
}

/// `POST /api/v1/photos/check`: would this photo enrol? Immediate feedback for
/// the console's upload (no face, two faces, too small, blurred…); nothing kept.
pub async fn check_photo(State(sh): S, Json(i): Json<PhotoCheckInput>) -> R<serde_json::Value> {
    match templates(&sh, std::slice::from_ref(&i.photo)).await {
        Ok(_) => Ok(Json(json!({ "ok": true, "message": "照片可用 / photo is usable" }))),
        Err(ApiError(StatusCode::BAD_REQUEST, msg)) => Ok(Json(json!({ "ok": false, "message": msg.trim_start_matches("photo 1: ") }))),
        Err(e) => Err(e),
    }
}

/// One photo's template (roster import), or why it cannot be enrolled.
pub async fn embed_photo(sh: &Shared, photo: &str) -> Result<Vec<f32>, ApiError> {
    Ok(templates(sh, &[photo.to_string()]).await?.remove(0))
}

/// Turn photos into templates in the vision process; any bad photo refuses all.
async fn templates(sh: &Shared, photos: &[String]) -> Result<Vec<Vec<f32>>, ApiError> {
    if photos.is_empty() {
        return Ok(vec![]);
    }
    let v = sh.vision.as_ref().ok_or_else(|| bad("face enrolment needs the face models: set [vision] enabled = true"))?;
    let mut out = Vec::new();
    for (i, p) in photos.iter().enumerate() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(p.trim()).map_err(|e| bad(format!("photo {}: not base64 ({e})", i + 1)))?;
        // Refused here, before the vision process allocates what the header claims.
        vision_protocol::image::check(&bytes).map_err(|e| bad(format!("photo {}: {e}", i + 1)))?;
        let (tx, rx) = oneshot::channel();
        v.send(VisionCmd::Enrol { image: p.clone(), reply: tx }).await.map_err(|_| anyhow::anyhow!("the vision process is not running"))?;
        match rx.await.map_err(|_| anyhow::anyhow!("the vision process is not running"))? {
            EnrolResult::Ok(e) => out.push(e),
            EnrolResult::Rejected(rejection) => return Err(bad(format!("photo {}: {rejection}", i + 1))),
            EnrolResult::Error(e) => return Err(bad(format!("photo {}: {e}", i + 1))),
        }
    }
    Ok(out)
}

/// Store a person with their templates, then tell the box (gallery, gate, replicas).
async fn save(sh: &Shared, r: &PersonRecord, must_be_new: bool, tmpl: &[Vec<f32>]) -> Result<(), ApiError> {
    sh.store.put_person(r, must_be_new)?;
    for e in tmpl {
        sh.store.add_template(&r.person.id, e)?;
    }
    sh.enrolment.changed(Changed::Person(r.person.id.clone())).await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleInput {
    pub plate: String,
    pub owner: String,
    /// RFC 3339 or YYYY-MM-DD.
    #[serde(default)]
    pub valid_until: Option<String>,
}

pub async fn add_vehicle(State(sh): S, Json(i): Json<VehicleInput>) -> R<Vehicle> {
    super::api::writable(&sh)?;
    let plate = i.plate.trim().to_string();
    domain::gate::plate::validate(&plate).map_err(|e| bad(format!("invalid plate {plate:?}: {e}")))?;
    if sh.store.get_person(&i.owner)?.is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no resident {:?} (see `gatewarden resident list`)", i.owner)));
    }
    let valid_until = i.valid_until.as_deref().map(super::api::parse_time).transpose().map_err(bad)?;
    let v = Vehicle { plate: plate.clone(), owner: i.owner, valid_until };
    sh.store.put_vehicle(&v)?;
    sh.enrolment.changed(Changed::Vehicle(plate)).await?;
    Ok(Json(v))
}

pub async fn list_vehicles(State(sh): S) -> R<Vec<Vehicle>> {
    Ok(Json(sh.store.list_vehicles()?))
}

pub async fn remove_vehicle(State(sh): S, Path(plate): Path<String>) -> R<Vehicle> {
    super::api::writable(&sh)?;
    let v = sh.store.remove_vehicle(&plate)?;
    sh.enrolment.changed(Changed::Vehicle(plate)).await?;
    Ok(Json(v))
}

fn consent(sh: &Shared, c: Option<ConsentInput>, photos: bool) -> Result<Option<Consent>, ApiError> {
    match c {
        Some(c) if c.by.trim().is_empty() || c.how.trim().is_empty() => Err(bad("consent needs who gave it and how")),
        Some(c) => Ok(Some(Consent { by: c.by, at: sh.clock.now(), how: c.how, purpose: c.purpose })),
        // PIPL Art. 29 and the 2025 Measures: no face template without separate consent.
        None if photos => Err(bad("a face is enrolled only with recorded consent: give --consent-by and --consent-how")),
        None => Ok(None),
    }
}

pub async fn add_resident(State(sh): S, Json(i): Json<ResidentInput>) -> R<serde_json::Value> {
    super::api::writable(&sh)?;
    if i.name.trim().is_empty() {
        return Err(bad("name must not be empty"));
    }
    if let Some(p) = &i.pin {
        check_pin(p)?;
    }
    if let Some(e) = &i.elder {
        if sh.store.get_elder(e)?.is_none() {
            return Err(ApiError(StatusCode::NOT_FOUND, format!("no elder {e:?}")));
        }
    }
    let consent = consent(&sh, i.consent, !i.photos.is_empty())?;
    let tmpl = templates(&sh, &i.photos).await?;
    let id = i.id.unwrap_or_else(|| format!("R{:05}", sh.store.next_id().unwrap_or(0)));
    let k = &sh.credential_key;
    let person = Person {
        id: id.clone(),
        name: i.name,
        kind: if i.deny { PersonKind::Denied } else { PersonKind::Resident },
        unit: i.unit,
        elder: i.elder,
        pin_hash: i.pin.as_deref().map(|p| secret_hash(k, Credential::Pin, p)),
        cards: i.cards.iter().map(|c| secret_hash(k, Credential::Card, c)).collect(),
        qr_hash: None,
        valid_from: None,
        valid_until: None,
    };
    let r = PersonRecord { person, consent, id_masked: None, id_hash: None, host_unit: None, plate: None, created_at: sh.clock.now() };
    save(&sh, &r, true, &tmpl).await?;
    tracing::info!(person = %id, templates = tmpl.len(), "resident enrolled");
    Ok(Json(json!({ "id": id, "templates": tmpl.len(), "has_pin": r.person.pin_hash.is_some(), "cards": r.person.cards.len() })))
}

pub async fn list_people(State(sh): S) -> R<Vec<serde_json::Value>> {
    let counts = sh.store.template_counts()?;
    Ok(Json(
        sh.store
            .list_people()?
            .into_iter()
            .map(|r| {
                let p = &r.person;
                json!({
                    "id": p.id, "name": p.name, "kind": p.kind, "unit": p.unit, "elder": p.elder,
                    "faces": counts.get(&p.id).copied().unwrap_or(0),
                    "pin": p.pin_hash.is_some(), "cards": p.cards.len(), "qr": p.qr_hash.is_some(),
                    "valid_from": p.valid_from, "valid_until": p.valid_until,
                    "consent": r.consent, "id_masked": r.id_masked, "host_unit": r.host_unit, "plate": r.plate,
                })
            })
            .collect(),
    ))
}

/// `forget`: every biometric and personal trace of the person goes.
pub async fn forget(State(sh): S, Path(id): Path<String>) -> R<serde_json::Value> {
    super::api::writable(&sh)?;
    let vehicles: Vec<String> = sh.store.list_vehicles()?.into_iter().filter(|v| v.owner == id).map(|v| v.plate).collect();
    // Record, templates and vehicles go, then the person's key (crypto-shredding).
    let r = sh.store.remove_person(&id)?;
    sh.enrolment.changed(Changed::PersonRemoved(id.clone())).await?;
    for plate in vehicles {
        sh.enrolment.changed(Changed::Vehicle(plate)).await?;
    }
    // Their passages stay in the entry log (access records), no longer naming them.
    let passages = sh.store.erase_from_entries(&id, "(forgotten)")?;
    // No id or name in the log line either: the audit entry records the erasure.
    tracing::info!(passages, "person forgotten");
    Ok(Json(json!({ "forgotten": id, "name": r.person.name, "entry_log_records_anonymised": passages })))
}

pub async fn register_visitor(State(sh): S, Json(i): Json<VisitorInput>) -> R<serde_json::Value> {
    super::api::writable(&sh)?;
    if i.name.trim().is_empty() || i.host_unit.trim().is_empty() {
        return Err(bad("a visitor needs a name and a host unit"));
    }
    let now = sh.clock.now();
    let today = (now + chrono::Duration::hours(8)).date_naive();
    let idn = IdNumber::parse(&i.id_number, today).map_err(|e| bad(format!("invalid ID number: {e}")))?;
    if let Some(p) = &i.plate {
        domain::gate::plate::validate(p).map_err(|e| bad(format!("invalid plate {p:?}: {e}")))?;
    }
    let valid_for = config::Dur::parse(&i.valid_for).map_err(bad)?;
    if valid_for.get() > std::time::Duration::from_secs(7 * 24 * 3600) {
        return Err(bad("a visitor pass lasts at most 7 days"));
    }
    let photos: Vec<String> = i.photo.into_iter().collect();
    let consent = consent(&sh, i.consent, !photos.is_empty())?;
    let tmpl = templates(&sh, &photos).await?;
    let id = format!("V{:05}", sh.store.next_id()?);
    let k = sh.credential_key.clone();
    // A fresh 6-digit PIN no one else has, and a QR token.
    let taken: std::collections::HashSet<String> = sh.store.list_people()?.into_iter().filter_map(|r| r.person.pin_hash).collect();
    let pin = loop {
        let p = format!("{:06}", rand::random::<u32>() % 1_000_000);
        if !taken.contains(&secret_hash(&k, Credential::Pin, &p)) {
            break p;
        }
    };
    let qr = format!("{QR_PREFIX}{}", hex::encode(rand::random::<[u8; 12]>()));
    let until = now + domain::clock::chrono_dur(valid_for.get());
    let person = Person {
        id: id.clone(),
        name: i.name,
        kind: PersonKind::Visitor,
        unit: i.host_unit.clone(),
        elder: None,
        pin_hash: Some(secret_hash(&k, Credential::Pin, &pin)),
        cards: vec![],
        qr_hash: Some(secret_hash(&k, Credential::Qr, &qr)),
        valid_from: Some(now),
        valid_until: Some(until),
    };
    let r = PersonRecord {
        person,
        consent,
        id_masked: Some(idn.masked()),
        id_hash: Some(idn.keyed_hash(&k)),
        host_unit: Some(i.host_unit),
        plate: i.plate,
        created_at: now,
    };
    save(&sh, &r, true, &tmpl).await?;
    if let Some(p) = &r.plate {
        // The visitor's car: valid exactly as long as the pass.
        sh.store.put_vehicle(&Vehicle { plate: p.trim().to_string(), owner: id.clone(), valid_until: Some(until) })?;
        sh.enrolment.changed(Changed::Vehicle(p.trim().to_string())).await?;
    }
    tracing::info!(visitor = %id, id_number = %idn.masked(), until = %until.to_rfc3339(), "visitor registered");
    Ok(Json(json!({ "id": id, "pin": pin, "qr": qr, "valid_from": now, "valid_until": until, "id_masked": idn.masked(), "face": !tmpl.is_empty() })))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput {
    /// pin, card or qr
    pub kind: String,
    pub value: String,
}

/// A keypad or reader that speaks HTTP. Answers with the decision.
pub async fn credential(State(sh): S, Path(gate): Path<String>, Json(i): Json<CredentialInput>) -> R<serde_json::Value> {
    let kind = match i.kind.as_str() {
        "pin" => Credential::Pin,
        "card" => Credential::Card,
        "qr" => Credential::Qr,
        "plate" => Credential::Plate,
        k => return Err(bad(format!("kind {k:?} is not pin, card, qr or plate"))),
    };
    if !sh.cfg.gates.iter().any(|g| g.name == gate) {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no gate {gate:?}")));
    }
    let g = sh.gates.as_ref().ok_or_else(|| bad("no gates are configured"))?;
    let (tx, rx) = oneshot::channel();
    g.send(GateMsg::Credential { gate, kind, value: i.value, reply: Some(tx) }).await.map_err(|_| anyhow::anyhow!("the gate task stopped"))?;
    let e = rx.await.map_err(|_| anyhow::anyhow!("the gate task stopped"))?;
    Ok(Json(json!({ "opened": e.as_ref().is_some_and(|e| e.opened), "entry": e })))
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    since: Option<String>,
    until: Option<String>,
    person: Option<String>,
    gate: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

pub async fn log(State(sh): S, Query(q): Query<LogQuery>) -> Result<Response, ApiError> {
    let t = |s: &Option<String>| s.as_deref().map(super::api::parse_time).transpose().map_err(bad);
    let (since, until) = (t(&q.since)?, t(&q.until)?);
    let rows: Vec<elog::Chained> = sh
        .store
        .entries()?
        .into_iter()
        .map(|c| sh.store.open_reason(c))
        .filter(|c| since.is_none_or(|s| c.entry.at >= s) && until.is_none_or(|u| c.entry.at < u))
        .filter(|c| q.person.as_ref().is_none_or(|p| c.entry.person.as_ref() == Some(p)))
        .filter(|c| q.gate.as_ref().is_none_or(|g| &c.entry.gate == g))
        .collect();
    if q.format.as_deref() == Some("csv") {
        let mut out = String::from(elog::csv_header());
        out.push('\n');
        for r in &rows {
            out.push_str(&elog::csv_row(r));
            out.push('\n');
        }
        return Ok(([("content-type", "text/csv; charset=utf-8")], out).into_response());
    }
    Ok(Json(rows).into_response())
}

pub async fn verify_log(State(sh): S) -> Result<Response, ApiError> {
    match sh.store.verify_entries()? {
        Ok(n) => Ok(Json(json!({ "ok": true, "records": n })).into_response()),
        Err(e) => Ok((StatusCode::CONFLICT, Json(json!({ "ok": false, "error": e.to_string() }))).into_response()),
    }
}

/// `POST /api/v1/keys/rotate`: a fresh template key; every template re-sealed.
pub async fn rotate_key(State(sh): S) -> R<serde_json::Value> {
    let n = store::rotate_template_key(&sh.cfg.template_key_path(), &sh.store).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    Ok(Json(json!({ "resealed": n, "key_file": sh.cfg.template_key_path() })))
}

/// `POST /api/v1/backup`: a consistent snapshot of the whole store, taken
/// while the daemon keeps running (writers pause for the copy).
pub async fn backup(State(sh): S) -> Result<Response, ApiError> {
    let store = sh.store.clone();
    let now = sh.clock.now().timestamp();
    let (bytes, header) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        store.backup(now, &mut out).map(|h| (out, h))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(records = header.records, bytes = bytes.len(), "backup taken");
    Ok(([("content-type", "application/octet-stream")], bytes).into_response())
}

/// Faces stored above this many require filing with the authorities (2025 Measures).
pub const FILING_THRESHOLD: usize = 100_000;

/// `GET /api/v1/compliance`: what an inspector asks about.
pub async fn compliance(State(sh): S) -> R<serde_json::Value> {
    let counts = sh.store.template_counts()?;
    let people = sh.store.list_people()?;
    let faces = counts.len();
    let without_consent: Vec<&str> = people.iter().filter(|r| counts.contains_key(&r.person.id) && r.consent.is_none()).map(|r| r.person.id.as_str()).collect();
    let vehicle_owners: std::collections::HashSet<String> = sh.store.list_vehicles()?.into_iter().map(|v| v.owner).collect();
    let without_alternative: Vec<&str> = people
        .iter()
        .filter(|r| r.person.kind == PersonKind::Resident && r.person.pin_hash.is_none() && r.person.cards.is_empty())
        .filter(|r| !vehicle_owners.contains(&r.person.id))
        .map(|r| r.person.id.as_str())
        .collect();
    let a = &sh.cfg.access;
    let purges: Vec<serde_json::Value> = sh.store.last_purges()?.into_iter().map(|(w, at, n)| json!({"what": w, "at": at, "removed": n})).collect();
    Ok(Json(json!({
        "faces": { "people": faces, "templates": counts.values().sum::<usize>(), "filing_threshold": FILING_THRESHOLD, "near_threshold": faces * 10 >= FILING_THRESHOLD * 9 },
        "without_consent": without_consent,
        "without_face_free_credential": without_alternative,
        "retention": {
            "unknown_snapshots": a.unknown_retention.to_string(), "visitors": a.visitor_retention.to_string(),
            "entry_log": a.entry_log_retention.to_string(), "leaves": a.leave_retention.to_string(),
            "delivered_notifications": sh.cfg.alert.outbox.retention.to_string(),
            "sighting_history": format!("{} (at most {} per elder)", sh.cfg.presence.history_window, sh.cfg.presence.history_max),
            "audit_log": sh.cfg.console.audit_retention.to_string(),
        },
        "last_purges": purges,
        "templates_encrypted": true,
    })))
}
