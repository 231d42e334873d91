//! Roster import and export: residents, elders, vehicles and wristbands from a
//! spreadsheet (CSV or XLSX, one row per record, a `kind` column) and a folder
//! of photos.
//!
//! An import is staged on the daemon in batches (so photos need not travel in
//! one giant request, and the CLI and console can show progress), checked row
//! by row, and then either dropped (dry run, or any bad row) or committed in
//! one store transaction: all or nothing per file.

use super::api::{bad, ApiError};
use super::Shared;
use crate::enrolment::Changed;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use domain::gate::idcard::IdNumber;
use domain::gate::policy::{Person, PersonKind, Vehicle};
use domain::presence::{BandId, Contact, Elder};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use store::{Consent, PersonRecord};

type S = State<Arc<Shared>>;

/// The columns, in order, of both import and export.
pub const COLUMNS: [&str; 20] = [
    "kind",
    "id",
    "name",
    "unit",
    "building",
    "room",
    "grid",
    "phone",
    "id_number",
    "photo",
    "pin",
    "card",
    "plate",
    "owner",
    "band",
    "elder",
    "categories",
    "contacts",
    "consent_by",
    "consent_how",
];

/// One spreadsheet row as text, by column name. Unknown columns are refused
/// when the file is read, so a typo in a header is not silently ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Row {
    /// 1-based line in the file (the header is line 1).
    pub line: usize,
    pub cells: HashMap<String, String>,
    /// The photo file's bytes, base64 (the CLI reads it from --photos).
    #[serde(default)]
    pub photo_data: Option<String>,
}

impl Row {
    fn get(&self, k: &str) -> &str {
        self.cells.get(k).map(|s| s.trim()).unwrap_or("")
    }
    fn opt(&self, k: &str) -> Option<String> {
        Some(self.get(k)).filter(|s| !s.is_empty()).map(String::from)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RowError {
    pub line: usize,
    pub kind: String,
    pub id: String,
    pub reason: String,
}

/// What a good row turns into.
#[derive(Debug, Clone)]
enum Planned {
    Resident(PersonRecord, Vec<Vec<f32>>),
    Elder(Elder),
    Vehicle(Vehicle),
    Band { band: BandId, elder: String },
}

struct Staged {
    started: domain::clock::Timestamp,
    /// Read once when the import starts: the compound's units (None: not
    /// checked) and the credential hashes already in use.
    units: Option<HashSet<String>>,
    credentials_in_use: HashSet<String>,
    planned: Vec<(usize, Planned)>,
    errors: Vec<RowError>,
    rows: usize,
    ids: HashSet<String>,
    bands: HashSet<String>,
    plates: HashSet<String>,
    elders: HashSet<String>,
    next: u64,
}

/// Imports in progress, by id. Small: plans and embeddings, not photos.
#[derive(Default)]
pub struct Imports(Mutex<HashMap<String, Staged>>);

/// An import not committed within this long is dropped.
const IMPORT_TTL: chrono::Duration = chrono::Duration::hours(1);

/// `POST /api/v1/roster/imports`: start one (returns its id).
pub async fn start(State(sh): S) -> Result<Json<serde_json::Value>, ApiError> {
    super::api::writable(&sh)?;
    let now = sh.clock.now();
    let credentials_in_use = sh.store.list_people()?.into_iter().flat_map(|r| r.person.pin_hash.into_iter().chain(r.person.cards)).collect();
    let st = Staged {
        started: now,
        units: known_units(&sh)?,
        credentials_in_use,
        planned: Vec::new(),
        errors: Vec::new(),
        rows: 0,
        ids: HashSet::new(),
        bands: HashSet::new(),
        plates: HashSet::new(),
        elders: HashSet::new(),
        next: 0,
    };
    let id = hex::encode(rand::random::<[u8; 8]>());
    let mut all = sh.imports.0.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|_, s| now - s.started < IMPORT_TTL);
    all.insert(id.clone(), st);
    Ok(Json(json!({ "import": id })))
}

/// `POST /api/v1/roster/imports/:id/rows`: check a batch of rows.
pub async fn add_rows(State(sh): S, Path(import): Path<String>, Json(rows): Json<Vec<Row>>) -> Result<Json<serde_json::Value>, ApiError> {
    // Photos go to the vision process first (no lock held while waiting).
    let mut embedded: HashMap<usize, Result<Vec<f32>, String>> = HashMap::new();
    for r in &rows {
        if let Some(data) = &r.photo_data {
            let res = match super::access::embed_photo(&sh, data).await {
                Ok(e) => Ok(e),
                Err(ApiError(_, msg)) => Err(format!("photo {}: {}", r.get("photo"), msg.trim_start_matches("photo 1: "))),
            };
            embedded.insert(r.line, res);
        }
    }
    let mut all = sh.imports.0.lock().unwrap_or_else(|e| e.into_inner());
    let st = all.get_mut(&import).ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no import {import:?} (it expires after an hour)")))?;
    let mut errors = Vec::new();
    for r in rows {
        st.rows += 1;
        let emb = embedded.remove(&r.line);
        match check(&sh, st, &r, emb) {
            Ok(p) => st.planned.push((r.line, p)),
            Err(reason) => errors.push(RowError {
                line: r.line,
                kind: r.get("kind").into(),
                id: r.opt("id").or(r.opt("plate")).or(r.opt("band")).unwrap_or_default(),
                reason,
            }),
        }
    }
    st.errors.extend(errors.clone());
    Ok(Json(json!({ "rows": st.rows, "errors": errors })))
}

fn known_units(sh: &Shared) -> Result<Option<HashSet<String>>, ApiError> {
    let Some(f) = &sh.cfg.access.units_file else { return Ok(None) };
    let text = std::fs::read_to_string(f).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("access.units_file {}: {e}", f.display())))?;
    Ok(Some(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()))
}

fn unit_ok(units: &Option<HashSet<String>>, u: &str) -> Result<(), String> {
    match units {
        Some(set) if !u.is_empty() && !set.contains(u) => Err(format!("unknown unit {u:?} (not in access.units_file)")),
        _ => Ok(()),
    }
}

/// Check one row against the store and the rows before it in the file.
fn check(sh: &Shared, st: &mut Staged, r: &Row, emb: Option<Result<Vec<f32>, String>>) -> Result<Planned, String> {
    let now = sh.clock.now();
    let store = &sh.store;
    let err = |e: store::StoreError| e.to_string();
    match r.get("kind") {
        "resident" => {
            let name = r.opt("name").ok_or("a resident needs a name")?;
            let id = id_or_new(st, sh, r, "R")?;
            if store.get_person(&id).map_err(err)?.is_some() || !st.ids.insert(format!("p:{id}")) {
                return Err(format!("resident id {id:?} is already enrolled or repeated in the file"));
            }
            unit_ok(&st.units, r.get("unit"))?;
            let (id_masked, id_hash) = match r.opt("id_number") {
                Some(n) => {
                    let idn = IdNumber::parse(&n, now.date_naive()).map_err(|e| format!("invalid ID number: {e}"))?;
                    (Some(idn.masked()), Some(idn.keyed_hash(&sh.credential_key)))
                }
                None => (None, None),
            };
            if let Some(p) = r.opt("pin") {
                if p.len() < 4 || p.len() > 8 || !p.chars().all(|c| c.is_ascii_digit()) {
                    return Err("a PIN is 4 to 8 digits".into());
                }
            }
            let templates = match (r.opt("photo"), emb) {
                (None, _) => vec![],
                (Some(f), None) => return Err(format!("photo {f:?} was not found in the photos folder")),
                (Some(_), Some(Err(e))) => return Err(e),
                (Some(_), Some(Ok(e))) => vec![e],
            };
            let consent = match (r.opt("consent_by"), r.opt("consent_how")) {
                (Some(by), Some(how)) => Some(Consent { by, at: now, how, purpose: super::access::ConsentInput::default_purpose() }),
                _ if !templates.is_empty() => return Err("a face is enrolled only with recorded consent: fill consent_by and consent_how".into()),
                _ => None,
            };
            let k = &sh.credential_key;
            let hashes: Vec<String> = r
                .opt("pin")
                .map(|p| crate::gate::task::secret_hash(k, domain::gate::log::Credential::Pin, &p))
                .into_iter()
                .chain(r.opt("card").map(|c| crate::gate::task::secret_hash(k, domain::gate::log::Credential::Card, &c)))
                .collect();
            for h in &hashes {
                if st.credentials_in_use.contains(h) || !st.ids.insert(format!("cred:{h}")) {
                    return Err("PIN or card already used by someone else".into());
                }
            }
            let person = Person {
                id: id.clone(),
                name,
                kind: PersonKind::Resident,
                unit: r.get("unit").into(),
                elder: r.opt("elder"),
                pin_hash: r.opt("pin").map(|p| crate::gate::task::secret_hash(k, domain::gate::log::Credential::Pin, &p)),
                cards: r.opt("card").map(|c| crate::gate::task::secret_hash(k, domain::gate::log::Credential::Card, &c)).into_iter().collect(),
                qr_hash: None,
                valid_from: None,
                valid_until: None,
            };
            Ok(Planned::Resident(PersonRecord { person, consent, id_masked, id_hash, host_unit: None, plate: None, created_at: now }, templates))
        }
        "elder" => {
            let name = r.opt("name").ok_or("an elder needs a name")?;
            let id = id_or_new(st, sh, r, "E")?;
            if store.get_elder(&id).map_err(err)?.is_some() || !st.elders.insert(id.clone()) {
                return Err(format!("elder id {id:?} is already enrolled or repeated in the file"));
            }
            unit_ok(&st.units, r.get("unit"))?;
            if let Some(p) = r.opt("phone") {
                if !domain::presence::is_phone(&p) {
                    return Err(format!("invalid phone number {p:?}"));
                }
            }
            let mut bands = Vec::new();
            if let Some(b) = r.opt("band") {
                bands.push(claim_band(sh, st, &b)?);
            }
            let contacts = r
                .get("contacts")
                .split(';')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| c.parse::<Contact>().map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Planned::Elder(Elder {
                id,
                name,
                building: r.get("building").into(),
                unit: r.get("unit").into(),
                room: r.get("room").into(),
                grid: r.get("grid").into(),
                phone: r.opt("phone"),
                bands,
                emergency_contacts: contacts,
                categories: r.get("categories").split(';').map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect(),
                notes: String::new(),
                enrolled_at: now,
                absence_after_secs: None,
            }))
        }
        "vehicle" => {
            let plate = r.opt("plate").ok_or("a vehicle needs a plate")?;
            domain::gate::plate::validate(&plate).map_err(|e| format!("invalid plate {plate:?}: {e}"))?;
            let owner = r.opt("owner").ok_or("a vehicle needs an owner (a resident id)")?;
            if store.get_vehicle(&plate).map_err(err)?.is_some() || !st.plates.insert(plate.clone()) {
                return Err(format!("plate {plate} is already enrolled or repeated in the file"));
            }
            if store.get_person(&owner).map_err(err)?.is_none() && !st.ids.contains(&format!("p:{owner}")) {
                return Err(format!("owner {owner:?} is not a resident (enrolled or earlier in the file)"));
            }
            Ok(Planned::Vehicle(Vehicle { plate, owner, valid_until: None }))
        }
        "wristband" => {
            let b = r.opt("band").ok_or("a wristband row needs a band")?;
            let elder = r.opt("elder").ok_or("a wristband row needs the elder it is bound to")?;
            if store.get_elder(&elder).map_err(err)?.is_none() && !st.elders.contains(&elder) {
                return Err(format!("unknown elder {elder:?} (enrolled or earlier in the file)"));
            }
            let band = claim_band(sh, st, &b)?;
            Ok(Planned::Band { band, elder })
        }
        "" => Err("the kind column is empty (resident, elder, vehicle or wristband)".into()),
        other => Err(format!("unknown kind {other:?} (resident, elder, vehicle or wristband)")),
    }
}

/// The row's id, or a fresh one like the API's ("R00012").
fn id_or_new(st: &mut Staged, sh: &Shared, r: &Row, prefix: &str) -> Result<String, String> {
    if let Some(id) = r.opt("id") {
        return Ok(id);
    }
    st.next += 1;
    Ok(format!("{prefix}{:05}", sh.store.next_id().map_err(|e| e.to_string())? + st.next))
}

fn claim_band(sh: &Shared, st: &mut Staged, raw: &str) -> Result<BandId, String> {
    let band: BandId = raw.parse().map_err(|e: domain::presence::BandIdError| e.to_string())?;
    if let Some(owner) = sh.store.elder_for_band(&band).map_err(|e| e.to_string())? {
        return Err(format!("duplicate wristband {band}: already bound to elder {owner}"));
    }
    if !st.bands.insert(band.to_string()) {
        return Err(format!("duplicate wristband {band}: appears twice in the file"));
    }
    Ok(band)
}

/// `POST /api/v1/roster/imports/:id/commit?dry_run=`: apply everything in one
/// transaction if every row was good; otherwise, or for a dry run, nothing.
pub async fn commit(
    State(sh): S,
    Path(import): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let dry = q.get("dry_run").is_some_and(|v| v == "true");
    let st = sh
        .imports
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&import)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no import {import:?}")))?;
    let counts = |p: &[(usize, Planned)]| {
        let mut c: HashMap<&str, usize> = HashMap::new();
        for (_, x) in p {
            *c.entry(match x {
                Planned::Resident(..) => "residents",
                Planned::Elder(_) => "elders",
                Planned::Vehicle(_) => "vehicles",
                Planned::Band { .. } => "wristbands",
            })
            .or_default() += 1;
        }
        c
    };
    let summary = counts(&st.planned);
    if dry || !st.errors.is_empty() {
        let mut errors = st.errors;
        errors.sort_by_key(|e| e.line);
        return Ok(Json(json!({ "imported": false, "dry_run": dry, "rows": st.rows, "would_import": summary, "errors": errors })));
    }
    // Bands from wristband rows join their elder (new in this file or enrolled).
    let mut elders: Vec<Elder> = Vec::new();
    let mut people = Vec::new();
    let mut vehicles = Vec::new();
    let mut extra_bands: Vec<(BandId, String)> = Vec::new();
    for (_, p) in st.planned {
        match p {
            Planned::Resident(r, t) => people.push((r, t)),
            Planned::Elder(e) => elders.push(e),
            Planned::Vehicle(v) => vehicles.push(v),
            Planned::Band { band, elder } => extra_bands.push((band, elder)),
        }
    }
    for (band, elder) in extra_bands {
        match elders.iter_mut().find(|e| e.id == elder) {
            Some(e) => e.bands.push(band),
            None => {
                let mut e = sh.store.get_elder(&elder)?.ok_or_else(|| bad(format!("elder {elder} disappeared during the import")))?;
                e.bands.push(band);
                elders.push(e);
            }
        }
    }
    sh.store.import_roster(&people, &elders, &vehicles)?;
    // Now tell the running parts, and the replicas.
    for e in &elders {
        sh.enrolment.changed(Changed::Elder(e.id.clone())).await?;
    }
    for (r, _) in &people {
        sh.enrolment.changed(Changed::Person(r.person.id.clone())).await?;
    }
    for v in &vehicles {
        sh.enrolment.changed(Changed::Vehicle(v.plate.clone())).await?;
    }
    tracing::info!(rows = st.rows, ?summary, "roster imported");
    Ok(Json(json!({ "imported": true, "rows": st.rows, "imported_counts": summary, "errors": [] })))
}

/// `GET /api/v1/roster`: the roster as rows, in the import format. Never a
/// photo or a template; ID numbers only as stored (masked).
pub async fn export(State(sh): S) -> Result<Json<serde_json::Value>, ApiError> {
    let mut rows: Vec<HashMap<&str, String>> = Vec::new();
    for r in sh.store.list_people()?.into_iter().filter(|r| r.person.kind == PersonKind::Resident) {
        let p = r.person;
        rows.push(HashMap::from([
            ("kind", "resident".into()),
            ("id", p.id),
            ("name", p.name),
            ("unit", p.unit),
            ("elder", p.elder.unwrap_or_default()),
            ("consent_by", r.consent.as_ref().map(|c| c.by.clone()).unwrap_or_default()),
            ("consent_how", r.consent.as_ref().map(|c| c.how.clone()).unwrap_or_default()),
        ]));
    }
    for e in sh.store.list_elders()? {
        let mut bands = e.bands.iter().map(|b| b.to_string());
        rows.push(HashMap::from([
            ("kind", "elder".into()),
            ("id", e.id.clone()),
            ("name", e.name),
            ("unit", e.unit),
            ("building", e.building),
            ("room", e.room),
            ("grid", e.grid),
            ("phone", e.phone.unwrap_or_default()),
            ("band", bands.next().unwrap_or_default()),
            ("categories", e.categories.join(";")),
            (
                "contacts",
                e.emergency_contacts
                    .iter()
                    .map(|c| format!("{}:{}:{}", c.name, c.phone, c.relation).trim_end_matches(':').to_string())
                    .collect::<Vec<_>>()
                    .join(";"),
            ),
        ]));
        for b in bands {
            rows.push(HashMap::from([("kind", "wristband".into()), ("band", b), ("elder", e.id.clone())]));
        }
    }
    for v in sh.store.list_vehicles()? {
        if sh.store.get_person(&v.owner)?.is_some_and(|p| p.person.kind == PersonKind::Resident) {
            rows.push(HashMap::from([("kind", "vehicle".into()), ("plate", v.plate), ("owner", v.owner)]));
        }
    }
    let table: Vec<Vec<String>> = rows.into_iter().map(|r| COLUMNS.iter().map(|c| r.get(c).cloned().unwrap_or_default()).collect()).collect();
    Ok(Json(json!({ "columns": COLUMNS, "rows": table })))
}

/// `POST /api/v1/roster/parse?name=FILE.xlsx`: the console uploads the file
/// itself; the daemon reads it (CSV or XLSX) into rows with the same rules.
pub async fn parse(axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>, body: axum::body::Bytes) -> Result<Json<Vec<Row>>, ApiError> {
    let name = q.get("name").cloned().unwrap_or_default();
    let ext = std::path::Path::new(&name).extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext != "csv" && ext != "xlsx" {
        return Err(bad("give a .csv or .xlsx file"));
    }
    let tmp = tempfile::Builder::new().suffix(&format!(".{ext}")).tempfile().map_err(|e| bad(e.to_string()))?;
    std::fs::write(tmp.path(), &body).map_err(|e| bad(e.to_string()))?;
    // Parsing is CPU work on a file from outside: off the async threads.
    let path = tmp.path().to_owned();
    let parsed = tokio::task::spawn_blocking(move || read_file(&path)).await.map_err(|e| bad(e.to_string()))?;
    let rows = parsed.map_err(|e| bad(format!("{e:#}").replace(&tmp.path().display().to_string(), &name)))?;
    Ok(Json(rows))
}

// ---- files (used by the CLI) ----

/// Limits on a roster file, checked before anything is allocated for it: a
/// compound's roster fits well inside them, a hostile file does not.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
pub const MAX_ROWS: u64 = 50_000;
pub const MAX_COLUMNS: u64 = 64;
pub const MAX_CELLS: usize = 1_000_000;
pub const MAX_FIELD_BYTES: usize = 4 * 1024;

fn check_shape(path: &std::path::Path, row: u64, columns: u64) -> anyhow::Result<()> {
    if row >= MAX_ROWS {
        anyhow::bail!("{} goes past row {MAX_ROWS}; a roster may have at most {MAX_ROWS} rows (split it)", path.display());
    }
    if columns > MAX_COLUMNS {
        anyhow::bail!("{} row {} has a cell in column {columns}; a roster has at most {MAX_COLUMNS} columns", path.display(), row + 1);
    }
    Ok(())
}

/// Read a roster file: CSV (UTF-8, optional BOM) or XLSX (first sheet). The
/// header row names the columns; unknown names are an error.
pub fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    use anyhow::Context as _;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if size > MAX_FILE_BYTES {
        anyhow::bail!("{} is {size} bytes; a roster file may be at most {MAX_FILE_BYTES} bytes (split it)", path.display());
    }
    let grid: Vec<Vec<String>> = match ext.as_str() {
        "csv" => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 (save the CSV as UTF-8)", path.display()))?;
            let text = text.trim_start_matches('\u{feff}');
            let mut rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
            let mut grid = Vec::new();
            for (i, r) in rdr.records().enumerate() {
                let r = r.with_context(|| format!("{} is not valid CSV", path.display()))?;
                check_shape(path, i as u64, r.len() as u64)?;
                if let Some(f) = r.iter().find(|f| f.len() > MAX_FIELD_BYTES) {
                    anyhow::bail!("{} row {}: a field of {} bytes; a field may be at most {MAX_FIELD_BYTES}", path.display(), i + 1, f.len());
                }
                grid.push(r.iter().map(String::from).collect());
            }
            grid
        }
        "xlsx" => {
            use calamine::Reader as _;
            let mut wb: calamine::Xlsx<_> = calamine::open_workbook(path).with_context(|| format!("cannot open {} as XLSX", path.display()))?;
            let name = wb.sheet_names().first().cloned().ok_or_else(|| anyhow::anyhow!("{} has no sheet", path.display()))?;
            // Cell by cell, never `worksheet_range`: a sheet that declares a cell
            // at XFD1048576 would make it allocate the whole 17-billion-cell grid.
            let mut cells = wb.worksheet_cells_reader(&name).with_context(|| format!("cannot read the first sheet of {}", path.display()))?;
            let mut grid: Vec<Vec<String>> = Vec::new();
            let mut n = 0usize;
            while let Some(c) = cells.next_cell().with_context(|| format!("{} is not a valid XLSX sheet", path.display()))? {
                let (row, col) = c.get_position();
                check_shape(path, u64::from(row), u64::from(col) + 1)?;
                n += 1;
                if n > MAX_CELLS {
                    anyhow::bail!("{} has more than {MAX_CELLS} cells; a roster may have at most that many", path.display());
                }
                let v = calamine::Data::from(c.get_value().clone()).to_string();
                if v.len() > MAX_FIELD_BYTES {
                    anyhow::bail!("{} row {}: a cell of {} bytes; a cell may be at most {MAX_FIELD_BYTES}", path.display(), row + 1, v.len());
                }
                let (row, col) = (row as usize, col as usize);
                if grid.len() <= row {
                    grid.resize(row + 1, Vec::new());
                }
                if grid[row].len() <= col {
                    grid[row].resize(col + 1, String::new());
                }
                grid[row][col] = v;
            }
            grid
        }
        _ => anyhow::bail!("{}: give a .csv or .xlsx file", path.display()),
    };
    let mut it = grid.into_iter();
    let header: Vec<String> =
        it.next().ok_or_else(|| anyhow::anyhow!("{} is empty", path.display()))?.into_iter().map(|h| h.trim().to_ascii_lowercase()).collect();
    for h in &header {
        if !h.is_empty() && !COLUMNS.contains(&h.as_str()) {
            anyhow::bail!("{}: unknown column {h:?}; the columns are {}", path.display(), COLUMNS.join(", "));
        }
    }
    anyhow::ensure!(header.iter().any(|h| h == "kind"), "{}: the header needs a `kind` column", path.display());
    Ok(it
        .enumerate()
        .filter(|(_, r)| r.iter().any(|c| !c.trim().is_empty()))
        .map(|(i, r)| Row { line: i + 2, cells: header.iter().cloned().zip(r).filter(|(h, _)| !h.is_empty()).collect(), photo_data: None })
        .collect())
}

/// Write rows in the import format, as CSV or XLSX by extension.
pub fn write_file(path: &std::path::Path, columns: &[String], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let tmp = path.with_extension(format!("{ext}.partial"));
    match ext.as_str() {
        "csv" => {
            let mut w = csv::Writer::from_path(&tmp)?;
            w.write_record(columns)?;
            for r in rows {
                w.write_record(r)?;
            }
            w.flush()?;
        }
        "xlsx" => {
            let mut wb = rust_xlsxwriter::Workbook::new();
            let ws = wb.add_worksheet();
            ws.set_name("roster")?;
            for (c, h) in columns.iter().enumerate() {
                ws.write_string(0, c as u16, h)?;
            }
            for (i, r) in rows.iter().enumerate() {
                for (c, v) in r.iter().enumerate() {
                    // Text everywhere: PINs, phones and card numbers keep their leading zeros.
                    ws.write_string(i as u32 + 1, c as u16, v)?;
                }
            }
            wb.save(&tmp)?;
        }
        _ => anyhow::bail!("{}: give a .csv or .xlsx file", path.display()),
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_xlsx_round_trip_and_unknown_columns_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cols: Vec<String> = COLUMNS.iter().map(|s| s.to_string()).collect();
        let mut row = vec![String::new(); COLUMNS.len()];
        row[0] = "resident".into();
        row[1] = "R1".into();
        row[2] = "王建国".into();
        row[10] = "012345".into();
        for f in ["r.csv", "r.xlsx"] {
            let p = dir.path().join(f);
            write_file(&p, &cols, std::slice::from_ref(&row)).unwrap();
            let back = read_file(&p).unwrap();
            assert_eq!(back.len(), 1, "{f}");
            assert_eq!((back[0].line, back[0].get("name"), back[0].get("pin")), (2, "王建国", "012345"), "{f}: leading zeros kept");
        }
        let bad = dir.path().join("bad.csv");
        std::fs::write(&bad, "kind,nmae\nresident,x\n").unwrap();
        assert!(read_file(&bad).unwrap_err().to_string().contains("unknown column \"nmae\""));
    }
}
