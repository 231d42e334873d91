//! The administrator's command line. Every command is a request to the
//! running daemon's API (sled is single-process), with plain tables by
//! default and `--json` for scripts.

use super::*;
use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The daemon's config file (to find its API address and token).
    #[arg(long, short, env = "GATEWARDEN_CONFIG", default_value = "/etc/gatewarden/gatewarden.toml", global = true)]
    pub config: std::path::PathBuf,
    /// API base URL; overrides the config's http.listen.
    #[arg(long, env = "GATEWARDEN_API", global = true)]
    pub api: Option<String>,
    /// Admin token; by default read from the config or the token file the daemon wrote.
    #[arg(long, env = "GATEWARDEN_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print raw JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ElderCmd {
    /// Enroll an elder.
    Add {
        #[arg(long)]
        name: String,
        /// Optional id (default: generated, e.g. E00012).
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value = "")]
        building: String,
        #[arg(long, default_value = "")]
        unit: String,
        #[arg(long, default_value = "")]
        room: String,
        /// Grid (网格): selects the escalation ladder.
        #[arg(long, default_value = "")]
        grid: String,
        #[arg(long)]
        phone: Option<String>,
        /// Wristband: a MAC (C3:A1:F0:00:11:01) or ibeacon:<uuid>:<major>:<minor>. Repeatable.
        #[arg(long = "band")]
        bands: Vec<String>,
        /// Emergency contact NAME:PHONE[:RELATION]. Repeatable.
        #[arg(long = "contact")]
        contacts: Vec<String>,
        /// over70, alone, bereaved, disabled, or any category of
        /// `alert.absence_by_category` (e.g. dementia). Repeatable.
        #[arg(long = "category")]
        categories: Vec<String>,
        #[arg(long, default_value = "")]
        notes: String,
        /// This elder's own absence threshold (e.g. 24h); default: their categories', else the site's.
        #[arg(long)]
        absence_after: Option<String>,
    },
    /// List enrolled elders.
    List,
    /// Show one elder with last-seen and leaves.
    Show { id: String },
    /// Change an elder's details or wristbands.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        building: Option<String>,
        #[arg(long)]
        unit: Option<String>,
        #[arg(long)]
        room: Option<String>,
        #[arg(long)]
        grid: Option<String>,
        #[arg(long)]
        phone: Option<String>,
        #[arg(long = "add-band")]
        add_bands: Vec<String>,
        #[arg(long = "remove-band")]
        remove_bands: Vec<String>,
        /// Replaces all emergency contacts.
        #[arg(long = "contact")]
        contacts: Vec<String>,
        /// Replaces all categories.
        #[arg(long = "category")]
        categories: Vec<String>,
        #[arg(long)]
        notes: Option<String>,
        /// This elder's own absence threshold (e.g. 24h); "default" clears it.
        #[arg(long)]
        absence_after: Option<String>,
    },
    /// Remove an elder and their presence history.
    Remove { id: String },
}

#[derive(Subcommand, Debug)]
pub enum StaffCmd {
    Add {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        phone: Option<String>,
        #[arg(long, default_value = "")]
        role: String,
        #[arg(long, default_value = "")]
        grid: String,
    },
    List,
    Remove {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum EscalationCmd {
    /// Set a grid's ladder. Levels are given in order: --level "网格员:grid-wecom:s1,s2" --level "社区办:office-ding".
    Set {
        #[arg(long)]
        grid: String,
        /// NAME:CHANNEL[+CHANNEL…][:STAFF[,STAFF…]]
        #[arg(long = "level", required = true)]
        levels: Vec<String>,
    },
    /// Show the default ladder and each grid's.
    List,
    /// Remove a grid's ladder (it falls back to the default).
    Remove { grid: String },
}

#[derive(Subcommand, Debug)]
pub enum LeaveCmd {
    /// Register a planned absence: no alert while it lasts.
    Add {
        elder: String,
        /// YYYY-MM-DD (China time) or RFC 3339.
        #[arg(long)]
        until: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long, default_value = "")]
        by: String,
    },
    List {
        elder: Option<String>,
    },
    Remove {
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum AlertsCmd {
    /// Open alerts (or all with --all).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Acknowledge an alert: stops reminders and escalation.
    Ack {
        id: u64,
        #[arg(long)]
        by: String,
        /// all_well (已上门，一切正常), hospital (已送医), family_contacted (已联系家属), other (其他).
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Close an alert by hand, with a reason (everyone told hears it resolved).
    Resolve {
        id: u64,
        #[arg(long)]
        by: String,
        #[arg(long)]
        reason: String,
    },
    /// Send a real test message through a channel.
    TestChannel { name: String },
    /// Notifications not yet delivered, with their last error.
    Outbox,
    /// Requeue a notification that failed permanently (after fixing the channel).
    Retry { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum WristbandCmd {
    /// Wristbands heard that nobody is enrolled with.
    Unknown,
}

pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    pub json: bool,
}

impl Client {
    pub fn new(c: &Conn) -> anyhow::Result<Client> {
        let cfg = config::Config::load(&c.config).ok();
        let base = match (&c.api, &cfg) {
            (Some(a), _) => a.trim_end_matches('/').to_string(),
            (None, Some(cfg)) => format!("http://{}", cfg.http.listen),
            (None, None) => bail!("cannot read {} to find the daemon; pass --config or --api", c.config.display()),
        };
        let token = match (&c.token, &cfg) {
            (Some(t), _) => t.clone(),
            (None, Some(cfg)) => match cfg.admin_token()? {
                Some(t) => t,
                None => {
                    let p = cfg.admin_token_path();
                    std::fs::read_to_string(&p)
                        .with_context(|| {
                            format!("cannot read the admin token at {} (has the daemon run once? are you root or the service user?)", p.display())
                        })?
                        .trim()
                        .to_string()
                }
            },
            (None, None) => bail!("no admin token: pass --token or --config"),
        };
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
        Ok(Client { base, token, http, json: c.json })
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the daemon at {} — is `gatewarden run` running?", self.base))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = v.get("error").and_then(|e| e.as_str()).unwrap_or("(no detail)");
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(v)
    }
}

impl Client {
    /// A raw POST (for `backup`): the response body as bytes.
    pub async fn post_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}/api/v1{path}", self.base);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .timeout(std::time::Duration::from_secs(600))
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {} — is `gatewarden run` running?", self.base))?;
        let status = resp.status();
        let body = resp.bytes().await?.to_vec();
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            bail!("{} (HTTP {})", v.get("error").and_then(|e| e.as_str()).unwrap_or("(no detail)"), status.as_u16());
        }
        Ok(body)
    }
}

/// `gatewarden backup`: ask the running daemon for a snapshot and write it
/// atomically (temp file, fsync, rename), so a half-written file never
/// looks like a backup.
pub async fn backup(c: &Client, out: &std::path::Path) -> anyhow::Result<()> {
    let bytes = c.post_bytes("/backup").await?;
    let header = store::Store::verify_backup(&bytes).context("the daemon sent a damaged backup")?;
    // Backups hold personal data: owner-only, like the store itself.
    store::write_private(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&header)?);
    } else {
        println!(
            "backup written to {} ({} records in {} trees, {} bytes, schema {}).",
            out.display(),
            header.records,
            header.trees,
            bytes.len(),
            header.schema
        );
        if header.key_fingerprint.is_some() {
            println!("Face templates in it are sealed: keep a copy of the template key file (not in the backup) to restore them on another box.");
        }
    }
    Ok(())
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    }
}

fn local(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(|x| x.as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| domain::clock::local_minute(t.with_timezone(&chrono::Utc)))
        .unwrap_or_else(|| "-".into())
}

/// Print rows as an aligned table (or the raw JSON).
fn table(c: &Client, v: &Value, headers: &[&str], row: impl Fn(&Value) -> Vec<String>) {
    if c.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let rows: Vec<Vec<String>> = v.as_array().map(|a| a.iter().map(&row).collect()).unwrap_or_default();
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            w[i] = w[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells.iter().enumerate().map(|(i, c)| format!("{c}{}", " ".repeat(w[i] - c.chars().count()))).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        println!("{}", line(r));
    }
}

fn one(c: &Client, v: &Value, summary: String) {
    if c.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{summary}");
    }
}

use reqwest::Method;

pub async fn elder(c: &Client, cmd: ElderCmd) -> anyhow::Result<()> {
    match cmd {
        ElderCmd::Add { name, id, building, unit, room, grid, phone, bands, contacts, categories, notes, absence_after } => {
            let i = ElderInput { id, name, building, unit, room, grid, phone, bands, contacts, categories, notes, absence_after };
            let v = c.call(Method::POST, "/elders", Some(serde_json::to_value(i)?)).await?;
            one(c, &v, format!("enrolled elder {} ({})", s(&v, "id"), s(&v, "name")));
        }
        ElderCmd::List => {
            let v = c.call(Method::GET, "/elders", None).await?;
            table(c, &v, &["ID", "NAME", "BUILDING", "UNIT", "ROOM", "GRID", "WRISTBANDS"], |e| {
                let bands = e["bands"].as_array().map(|b| b.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default();
                vec![s(e, "id"), s(e, "name"), s(e, "building"), s(e, "unit"), s(e, "room"), s(e, "grid"), bands]
            });
        }
        ElderCmd::Show { id } => {
            let v = c.call(Method::GET, &format!("/elders/{id}"), None).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ElderCmd::Update { id, name, building, unit, room, grid, phone, add_bands, remove_bands, contacts, categories, notes, absence_after } => {
            let p = ElderPatch {
                name,
                building,
                unit,
                room,
                grid,
                phone,
                add_bands,
                remove_bands,
                contacts: if contacts.is_empty() { None } else { Some(contacts) },
                categories: if categories.is_empty() { None } else { Some(categories) },
                notes,
                absence_after,
            };
            let v = c.call(Method::PATCH, &format!("/elders/{id}"), Some(serde_json::to_value(p)?)).await?;
            one(c, &v, format!("updated elder {}", s(&v, "id")));
        }
        ElderCmd::Remove { id } => {
            let v = c.call(Method::DELETE, &format!("/elders/{id}"), None).await?;
            one(c, &v, format!("removed elder {} ({})", s(&v, "id"), s(&v, "name")));
        }
    }
    Ok(())
}

pub async fn staff(c: &Client, cmd: StaffCmd) -> anyhow::Result<()> {
    match cmd {
        StaffCmd::Add { id, name, phone, role, grid } => {
            let v = c.call(Method::POST, "/staff", Some(json!({"id": id, "name": name, "phone": phone, "role": role, "grid": grid}))).await?;
            one(c, &v, format!("added staff member {} ({})", s(&v, "id"), s(&v, "name")));
        }
        StaffCmd::List => {
            let v = c.call(Method::GET, "/staff", None).await?;
            table(c, &v, &["ID", "NAME", "PHONE", "ROLE", "GRID"], |x| {
                let phone = x["phone"].as_str().map(crate::telemetry::mask_phone).unwrap_or_else(|| "-".into());
                vec![s(x, "id"), s(x, "name"), phone, s(x, "role"), s(x, "grid")]
            });
        }
        StaffCmd::Remove { id } => {
            let v = c.call(Method::DELETE, &format!("/staff/{id}"), None).await?;
            one(c, &v, format!("removed staff member {}", s(&v, "id")));
        }
    }
    Ok(())
}

/// "网格员:grid-wecom+grid-ntfy:s1,s2" → a level.
pub fn parse_level(spec: &str) -> anyhow::Result<Value> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (name, chans, staff) = match parts.as_slice() {
        [n, c] => (*n, *c, ""),
        [n, c, s] => (*n, *c, *s),
        _ => bail!("level {spec:?} must be NAME:CHANNEL[+CHANNEL…][:STAFF[,STAFF…]]"),
    };
    let channels: Vec<&str> = chans.split('+').filter(|x| !x.is_empty()).collect();
    if name.is_empty() || channels.is_empty() {
        bail!("level {spec:?} needs a name and at least one channel");
    }
    let staff: Vec<&str> = staff.split(',').filter(|x| !x.is_empty()).collect();
    Ok(json!({"name": name, "channels": channels, "staff": staff}))
}

pub async fn escalation(c: &Client, cmd: EscalationCmd) -> anyhow::Result<()> {
    match cmd {
        EscalationCmd::Set { grid, levels } => {
            let body: Vec<Value> = levels.iter().map(|l| parse_level(l)).collect::<anyhow::Result<_>>()?;
            let v = c.call(Method::PUT, &format!("/ladders/{grid}"), Some(Value::Array(body))).await?;
            one(c, &v, format!("grid {grid}: {} level(s) set", v.as_array().map_or(0, |a| a.len())));
        }
        EscalationCmd::List => {
            let v = c.call(Method::GET, "/ladders", None).await?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let show = |grid: &str, levels: &Value| {
                for (i, l) in levels.as_array().into_iter().flatten().enumerate() {
                    println!("{grid:<12} {}. {:<10} channels={} staff={}", i + 1, s(l, "name"), l["channels"], l["staff"]);
                }
            };
            show("(default)", &v["default"]);
            for g in v["grids"].as_array().into_iter().flatten() {
                show(&s(g, "grid"), &g["levels"]);
            }
        }
        EscalationCmd::Remove { grid } => {
            c.call(Method::DELETE, &format!("/ladders/{grid}"), None).await?;
            println!("grid {grid} now uses the default ladder");
        }
    }
    Ok(())
}

pub async fn leave(c: &Client, cmd: LeaveCmd) -> anyhow::Result<()> {
    match cmd {
        LeaveCmd::Add { elder, until, from, note, by } => {
            let i = LeaveInput { elder, from, until, note, by };
            let v = c.call(Method::POST, "/leaves", Some(serde_json::to_value(i)?)).await?;
            one(c, &v, format!("leave {} for {}: {} → {}", s(&v, "id"), s(&v, "elder"), local(&v, "from"), local(&v, "until")));
        }
        LeaveCmd::List { elder } => {
            let q = elder.map(|e| format!("?elder={e}")).unwrap_or_default();
            let v = c.call(Method::GET, &format!("/leaves{q}"), None).await?;
            table(c, &v, &["ID", "ELDER", "FROM", "UNTIL", "NOTE"], |l| vec![s(l, "id"), s(l, "elder"), local(l, "from"), local(l, "until"), s(l, "note")]);
        }
        LeaveCmd::Remove { id } => {
            let v = c.call(Method::DELETE, &format!("/leaves/{id}"), None).await?;
            one(c, &v, format!("removed leave {} of {}", s(&v, "id"), s(&v, "elder")));
        }
    }
    Ok(())
}

pub async fn alerts(c: &Client, cmd: AlertsCmd) -> anyhow::Result<()> {
    match cmd {
        AlertsCmd::List { all } => {
            let v = c.call(Method::GET, &format!("/alerts?all={all}"), None).await?;
            table(c, &v, &["ID", "KIND", "SUBJECT", "STATE", "LEVEL", "OPENED", "ACKED BY", "OUTCOME", "DETAIL"], |a| {
                let level = a["level"].as_u64().map(|l| (l + 1).to_string()).unwrap_or_default();
                let outcome = a["outcome"].as_str().and_then(|o| o.parse::<domain::alert::Outcome>().ok()).map_or("-", |o| o.zh()).to_string();
                let outcome = match a["note"].as_str().filter(|n| !n.is_empty()) {
                    Some(n) => format!("{outcome}（{n}）"),
                    None => outcome,
                };
                let detail = a["resolution"].as_str().map(str::to_string).unwrap_or_else(|| s(a, "detail"));
                vec![s(a, "id"), s(a, "kind"), s(&a["subject"], "id"), s(a, "state"), level, local(a, "opened_at"), s(a, "acked_by"), outcome, detail]
            });
        }
        AlertsCmd::Ack { id, by, outcome, note } => {
            let v = c.call(Method::POST, &format!("/alerts/{id}/ack"), Some(json!({"by": by, "outcome": outcome, "note": note}))).await?;
            one(c, &v, format!("alert {} acknowledged by {}", s(&v, "id"), s(&v, "acked_by")));
        }
        AlertsCmd::Resolve { id, by, reason } => {
            let v = c.call(Method::POST, &format!("/alerts/{id}/resolve"), Some(json!({"by": by, "reason": reason}))).await?;
            one(c, &v, format!("alert {} resolved: {}", s(&v, "id"), s(&v, "resolution")));
        }
        AlertsCmd::TestChannel { name } => {
            let v = c.call(Method::POST, &format!("/channels/{name}/test"), None).await?;
            one(c, &v, format!("channel {name}: {}", s(&v, "result")));
        }
        AlertsCmd::Outbox => {
            let v = c.call(Method::GET, "/outbox", None).await?;
            table(c, &v, &["ID", "CHANNEL", "ALERT", "KIND", "STATE", "ATTEMPTS", "NEXT TRY", "LAST ERROR"], |n| {
                vec![
                    s(n, "id"),
                    s(n, "channel"),
                    s(n, "alert_id"),
                    s(n, "kind"),
                    s(n, "delivery"),
                    s(n, "attempts"),
                    local(n, "next_attempt_at"),
                    s(n, "last_error"),
                ]
            });
        }
        AlertsCmd::Retry { id } => {
            let v = c.call(Method::POST, &format!("/outbox/{id}/retry"), None).await?;
            one(c, &v, format!("notification {} queued again on {}", s(&v, "id"), s(&v, "channel")));
        }
    }
    Ok(())
}

/// The gateway inventory: display name, id, last heard, state.
pub async fn gateways(c: &Client) -> anyhow::Result<()> {
    let v = c.call(Method::GET, "/gateways", None).await?;
    table(c, &v, &["NAME", "ID", "LAST HEARD", "STATE"], |g| {
        let state = if g["offline"].as_bool() == Some(true) { "OFFLINE" } else { "online" };
        let heard = if g["last_heard"].is_null() { "never".to_string() } else { local(g, "last_heard") };
        vec![s(g, "name"), s(g, "id"), heard, state.to_string()]
    });
    Ok(())
}

pub async fn presence(c: &Client) -> anyhow::Result<()> {
    let v = c.call(Method::GET, "/presence", None).await?;
    table(c, &v, &["ELDER", "NAME", "ADDRESS", "LAST SEEN", "WHERE", "SOURCE", "UNSEEN", "BATTERY", "LEAVE"], |r| {
        let h = r["unseen_hours"].as_f64().unwrap_or(0.0);
        // Marked against the elder's own threshold, not the site's.
        let limit = r["absence_after_hours"].as_f64().unwrap_or(48.0);
        let unseen = if h >= limit {
            format!("{:.1}d !", h / 24.0)
        } else if h >= 24.0 {
            format!("{:.1}d", h / 24.0)
        } else {
            format!("{h:.1}h")
        };
        let bat = r["battery"].as_u64().map(|b| format!("{b}%")).unwrap_or_else(|| "-".into());
        let leave = if r["on_leave"].as_bool() == Some(true) { "yes" } else { "" };
        vec![s(r, "elder"), s(r, "name"), s(r, "address"), local(r, "last_seen"), s(r, "place"), s(r, "source"), unseen, bat, leave.into()]
    });
    Ok(())
}

pub async fn wristbands(c: &Client, cmd: WristbandCmd) -> anyhow::Result<()> {
    match cmd {
        WristbandCmd::Unknown => {
            let v = c.call(Method::GET, "/wristbands/unknown", None).await?;
            table(c, &v, &["WRISTBAND", "LAST SEEN", "GATEWAY", "RSSI", "COUNT"], |u| {
                vec![s(u, "band"), local(u, "last_seen"), s(u, "gateway"), s(u, "rssi"), s(u, "count")]
            });
        }
    }
    Ok(())
}

pub async fn check_in(c: &Client, elder: String, by: String, note: String) -> anyhow::Result<()> {
    let i = CheckInInput { elder: elder.clone(), by, note };
    c.call(Method::POST, "/checkins", Some(serde_json::to_value(i)?)).await?;
    println!("check-in recorded: {elder} was seen");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_level_specs_parse_and_bad_ones_explain_the_format() {
        let v = parse_level("网格员:grid-wecom+grid-ntfy:s1,s2").unwrap();
        assert_eq!(v["channels"], json!(["grid-wecom", "grid-ntfy"]));
        assert_eq!(v["staff"], json!(["s1", "s2"]));
        assert!(parse_level("nochannel").unwrap_err().to_string().contains("NAME:CHANNEL"));
    }
}

// ---- gate access ----

// Parsed once per invocation: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum ResidentCmd {
    /// Enrol a resident: face photos (with consent), and/or PIN and cards.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value = "")]
        unit: String,
        /// A photo with exactly one face. Repeatable.
        #[arg(long = "photo")]
        photos: Vec<std::path::PathBuf>,
        /// Who gave consent to face enrolment (required with --photo).
        #[arg(long)]
        consent_by: Option<String>,
        /// How consent was given: "paper form", "app", …
        #[arg(long)]
        consent_how: Option<String>,
        #[arg(long)]
        consent_purpose: Option<String>,
        /// 4–8 digits for the keypad (a face-free way in).
        #[arg(long, env = "GATEWARDEN_PIN", hide_env_values = true)]
        pin: Option<String>,
        #[arg(long = "card")]
        cards: Vec<String>,
        /// The elder record this resident is (face at a gate counts as a sighting).
        #[arg(long)]
        elder: Option<String>,
        /// Put on the deny list.
        #[arg(long)]
        deny: bool,
    },
    /// Everyone enrolled for gate access (residents, visitors, deny list).
    List,
    /// Delete every biometric and personal record of a person.
    Forget { id: String },
}

#[derive(Subcommand, Debug)]
pub enum VisitorCmd {
    /// Register a visitor with their resident ID card; prints a PIN and a QR pass.
    Register {
        #[arg(long)]
        name: String,
        #[arg(long)]
        id_number: String,
        #[arg(long)]
        host_unit: String,
        /// e.g. "4h"
        #[arg(long, default_value = "4h")]
        valid_for: String,
        #[arg(long)]
        photo: Option<std::path::PathBuf>,
        #[arg(long)]
        plate: Option<String>,
        #[arg(long)]
        consent_by: Option<String>,
        #[arg(long)]
        consent_how: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum LogCmd {
    /// Show decisions (newest last); filters combine.
    Show {
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        person: Option<String>,
        #[arg(long)]
        gate: Option<String>,
        /// Write CSV to standard output.
        #[arg(long)]
        csv: bool,
    },
    /// Check the hash chain: any edit or deletion is reported.
    Verify,
}

fn photo_b64(p: &std::path::Path) -> anyhow::Result<String> {
    use base64::Engine as _;
    let bytes = std::fs::read(p).with_context(|| format!("cannot read photo {}", p.display()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn consent_json(by: Option<String>, how: Option<String>, purpose: Option<String>) -> Value {
    match (by, how) {
        (Some(by), Some(how)) => {
            let mut c = json!({"by": by, "how": how});
            if let Some(p) = purpose {
                c["purpose"] = json!(p);
            }
            c
        }
        (None, None) => Value::Null,
        _ => json!({"by": "", "how": ""}), // the daemon explains what is missing
    }
}

pub async fn resident(c: &Client, cmd: ResidentCmd) -> anyhow::Result<()> {
    match cmd {
        ResidentCmd::Add { name, id, unit, photos, consent_by, consent_how, consent_purpose, pin, cards, elder, deny } => {
            let photos: Vec<String> = photos.iter().map(|p| photo_b64(p)).collect::<anyhow::Result<_>>()?;
            let body = json!({"id": id, "name": name, "unit": unit, "photos": photos, "pin": pin, "cards": cards,
                "elder": elder, "deny": deny, "consent": consent_json(consent_by, consent_how, consent_purpose)});
            let v = c.call(Method::POST, "/residents", Some(body)).await?;
            one(c, &v, format!("enrolled {} ({} face template(s), PIN: {}, cards: {})", s(&v, "id"), s(&v, "templates"), s(&v, "has_pin"), s(&v, "cards")));
        }
        ResidentCmd::List => {
            let v = c.call(Method::GET, "/people", None).await?;
            table(c, &v, &["ID", "NAME", "KIND", "UNIT", "FACES", "PIN", "CARDS", "QR", "VALID UNTIL", "CONSENT"], |p| {
                let consent =
                    p["consent"]["by"].as_str().map(|b| format!("{b} ({})", p["consent"]["how"].as_str().unwrap_or(""))).unwrap_or_else(|| "-".into());
                vec![
                    s(p, "id"),
                    s(p, "name"),
                    s(p, "kind"),
                    s(p, "unit"),
                    s(p, "faces"),
                    s(p, "pin"),
                    s(p, "cards"),
                    s(p, "qr"),
                    local(p, "valid_until"),
                    consent,
                ]
            });
        }
        ResidentCmd::Forget { id } => {
            let v = c.call(Method::DELETE, &format!("/people/{id}"), None).await?;
            one(c, &v, format!("forgot {}: face templates and personal data deleted", s(&v, "forgotten")));
        }
    }
    Ok(())
}

pub async fn visitor(c: &Client, cmd: VisitorCmd) -> anyhow::Result<()> {
    match cmd {
        VisitorCmd::Register { name, id_number, host_unit, valid_for, photo, plate, consent_by, consent_how } => {
            let photo = photo.as_deref().map(photo_b64).transpose()?;
            let body = json!({"name": name, "id_number": id_number, "host_unit": host_unit, "valid_for": valid_for,
                "photo": photo, "plate": plate, "consent": consent_json(consent_by, consent_how, None)});
            let v = c.call(Method::POST, "/visitors", Some(body)).await?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("visitor {} registered (ID {}), valid until {}", s(&v, "id"), s(&v, "id_masked"), local(&v, "valid_until"));
            println!("PIN: {}", s(&v, "pin"));
            let qr = s(&v, "qr");
            if let Ok(code) = qrcode::QrCode::new(qr.as_bytes()) {
                println!("{}", code.render::<qrcode::render::unicode::Dense1x2>().quiet_zone(true).build());
            }
            println!("QR payload: {qr}");
        }
    }
    Ok(())
}

pub async fn log(c: &Client, cmd: LogCmd) -> anyhow::Result<()> {
    match cmd {
        LogCmd::Show { since, until, person, gate, csv } => {
            let mut q = Vec::new();
            for (k, v) in [("since", since), ("until", until), ("person", person), ("gate", gate)] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", percent_encoding::utf8_percent_encode(&v, percent_encoding::NON_ALPHANUMERIC)));
                }
            }
            if csv {
                q.push("format=csv".into());
                let url = format!("{}/api/v1/log?{}", c.base, q.join("&"));
                let r = c.http.get(url).bearer_auth(&c.token).send().await?;
                anyhow::ensure!(r.status().is_success(), "HTTP {}", r.status());
                print!("{}", r.text().await?);
                return Ok(());
            }
            let v = c.call(Method::GET, &format!("/log?{}", q.join("&")), None).await?;
            table(c, &v, &["SEQ", "TIME", "GATE", "CREDENTIAL", "PERSON", "KIND", "SCORE", "LIVE", "RESULT", "REASON"], |r| {
                let e = &r["entry"];
                let f = |k: &str| e[k].as_f64().map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
                let res = if e["opened"].as_bool() == Some(true) { "opened" } else { "denied" };
                vec![
                    s(r, "seq"),
                    local(e, "at"),
                    s(e, "gate"),
                    s(e, "credential"),
                    s(e, "person"),
                    s(e, "person_kind"),
                    f("score"),
                    f("liveness"),
                    res.into(),
                    s(e, "reason"),
                ]
            });
        }
        LogCmd::Verify => {
            let url = format!("{}/api/v1/log/verify", c.base);
            let r = c.http.get(url).bearer_auth(&c.token).send().await.context("cannot reach the daemon")?;
            let v: Value = r.json().await?;
            if v["ok"] == true {
                println!("entry log intact: {} record(s), hash chain verified", s(&v, "records"));
            } else {
                bail!("ENTRY LOG TAMPERED: {}", s(&v, "error"));
            }
        }
    }
    Ok(())
}

/// Present a PIN, card or QR at a gate (for keypads and readers without MQTT, and for tests).
pub async fn present(c: &Client, gate: &str, kind: &str, value: &str) -> anyhow::Result<()> {
    let v = c.call(Method::POST, &format!("/gates/{gate}/credential"), Some(json!({"kind": kind, "value": value}))).await?;
    let reason = v["entry"]["reason"].as_str().unwrap_or("-").to_string();
    if v["opened"] == true {
        one(c, &v, format!("gate {gate}: opened ({reason})"));
        Ok(())
    } else {
        one(c, &v, format!("gate {gate}: denied ({reason})"));
        std::process::exit(3);
    }
}

#[derive(Subcommand, Debug)]
pub enum VehicleCmd {
    /// Let a resident's car through the barrier.
    Add {
        /// e.g. 川A12345 (checked against GA 36).
        #[arg(long)]
        plate: String,
        /// The resident (or visitor) it belongs to.
        #[arg(long)]
        owner: String,
        #[arg(long)]
        valid_until: Option<String>,
    },
    List,
    Remove {
        plate: String,
    },
}

pub async fn vehicle(c: &Client, cmd: VehicleCmd) -> anyhow::Result<()> {
    match cmd {
        VehicleCmd::Add { plate, owner, valid_until } => {
            let v = c.call(Method::POST, "/vehicles", Some(json!({"plate": plate, "owner": owner, "valid_until": valid_until}))).await?;
            one(c, &v, format!("vehicle {} of {} enrolled", s(&v, "plate"), s(&v, "owner")));
        }
        VehicleCmd::List => {
            let v = c.call(Method::GET, "/vehicles", None).await?;
            table(c, &v, &["PLATE", "OWNER", "VALID UNTIL"], |x| vec![s(x, "plate"), s(x, "owner"), local(x, "valid_until")]);
        }
        VehicleCmd::Remove { plate } => {
            let v = c.call(Method::DELETE, &format!("/vehicles/{plate}"), None).await?;
            one(c, &v, format!("vehicle {} removed", s(&v, "plate")));
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Seal every face template under a new key (the old key stops working).
    Rotate,
}

pub async fn keys(c: &Client, cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Rotate => {
            let v = c.call(Method::POST, "/keys/rotate", None).await?;
            one(c, &v, format!("template key rotated: {} template(s) re-sealed; key file {}", s(&v, "resealed"), s(&v, "key_file")));
        }
    }
    Ok(())
}

/// `gatewarden compliance report`: what an inspector asks about, in plain text.
pub async fn compliance(c: &Client) -> anyhow::Result<()> {
    let v = c.call(Method::GET, "/compliance", None).await?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let f = &v["faces"];
    println!("Stored faces: {} people, {} templates (sealed at rest)", s(f, "people"), s(f, "templates"));
    if f["near_threshold"] == true {
        println!("  WARNING: nearing {} faces, which requires filing under the 2025 Measures on Facial Recognition", s(f, "filing_threshold"));
    }
    let list = |k: &str| v[k].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default();
    println!("Faces without a consent record: {}", if list("without_consent").is_empty() { "none".into() } else { list("without_consent") });
    println!(
        "Residents without a face-free way in (PIN, card or vehicle): {}",
        if list("without_face_free_credential").is_empty() { "none".into() } else { list("without_face_free_credential") }
    );
    println!("Retention:");
    if let Some(r) = v["retention"].as_object() {
        for (k, d) in r {
            println!("  {k}: {}", d.as_str().unwrap_or(""));
        }
    }
    println!("Last purges:");
    for p in v["last_purges"].as_array().into_iter().flatten() {
        println!("  {}: {} (removed {})", s(p, "what"), local(p, "at"), s(p, "removed"));
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a console user (or set a new password). The password is read from
    /// GATEWARDEN_PASSWORD, else from the first line of stdin.
    Add {
        name: String,
        /// admin (everything) or staff (read, acknowledge alerts, check in).
        #[arg(long, default_value = "staff")]
        role: String,
    },
    List,
    Remove {
        name: String,
    },
}

pub async fn user(c: &Client, cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add { name, role } => {
            let password = match std::env::var("GATEWARDEN_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    eprintln!("password for {name} (at least 10 characters):");
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let v = c.call(Method::POST, "/users", Some(json!({ "name": name, "role": role, "password": password }))).await?;
            one(c, &v, format!("console user {} ({}) saved; log in at /console/", s(&v, "name"), s(&v, "role")));
        }
        UserCmd::List => {
            let v = c.call(Method::GET, "/users", None).await?;
            table(c, &v, &["NAME", "ROLE", "CREATED"], |u| vec![s(u, "name"), s(u, "role"), local(u, "created_at")]);
        }
        UserCmd::Remove { name } => {
            let v = c.call(Method::DELETE, &format!("/users/{name}"), None).await?;
            one(c, &v, format!("removed {}; their sessions ended", s(&v, "removed")));
        }
    }
    Ok(())
}

/// `gatewarden audit`: admin writes, newest first.
pub async fn audit(c: &Client, limit: usize) -> anyhow::Result<()> {
    let v = c.call(Method::GET, &format!("/audit?limit={limit}"), None).await?;
    table(c, &v, &["WHEN", "WHO", "ROLE", "ACTION", "TARGET", "STATUS"], |e| {
        vec![local(e, "at"), s(e, "actor"), s(e, "role"), s(e, "action"), s(e, "target"), s(e, "status")]
    });
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum RosterCmd {
    /// Import residents, elders, vehicles and wristbands from a CSV or XLSX
    /// file (columns: see `roster export` or README). All or nothing per file.
    Import {
        file: std::path::PathBuf,
        /// The folder the `photo` column's file names are in.
        #[arg(long)]
        photos: Option<std::path::PathBuf>,
        /// Check every row and report, import nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write the roster in the import format (.csv or .xlsx). Never photos or templates.
    Export { file: std::path::PathBuf },
}

/// A progress line on stderr: redrawn in place on a terminal, every 10% otherwise.
struct Progress {
    total: usize,
    last_tenth: usize,
    tty: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        use std::io::IsTerminal as _;
        Progress { total, last_tenth: usize::MAX, tty: std::io::stderr().is_terminal() }
    }
    fn show(&mut self, done: usize, errors: usize) {
        let width = 30;
        let filled = (done * width).checked_div(self.total).unwrap_or(width);
        let bar = format!("[{}{}] {done}/{} rows checked, {errors} bad", "#".repeat(filled), "-".repeat(width - filled), self.total);
        if self.tty {
            eprint!("\r{bar}");
            if done == self.total {
                eprintln!();
            }
        } else {
            let tenth = (done * 10).checked_div(self.total).unwrap_or(10);
            if tenth != self.last_tenth {
                self.last_tenth = tenth;
                eprintln!("{bar}");
            }
        }
    }
}

pub async fn roster(c: &Client, cmd: RosterCmd) -> anyhow::Result<()> {
    use super::roster::{read_file, write_file};
    match cmd {
        RosterCmd::Export { file } => {
            let v = c.call(Method::GET, "/roster", None).await?;
            let cols: Vec<String> = serde_json::from_value(v["columns"].clone())?;
            let rows: Vec<Vec<String>> = serde_json::from_value(v["rows"].clone())?;
            write_file(&file, &cols, &rows)?;
            println!("wrote {} rows to {} (no photos or face templates are ever exported)", rows.len(), file.display());
        }
        RosterCmd::Import { file, photos, dry_run } => {
            let mut rows = read_file(&file)?;
            // Photos are read here; a missing file is reported by the daemon as a bad row.
            for r in rows.iter_mut() {
                let name = r.cells.get("photo").map(|s| s.trim().to_string()).unwrap_or_default();
                if name.is_empty() {
                    continue;
                }
                let Some(dir) = &photos else { bail!("line {}: a photo is named but --photos DIR was not given", r.line) };
                if let Ok(bytes) = std::fs::read(dir.join(&name)) {
                    use base64::Engine as _;
                    r.photo_data = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
                }
            }
            let import = c.call(Method::POST, "/roster/imports", None).await?["import"].as_str().unwrap_or_default().to_string();
            let mut progress = Progress::new(rows.len());
            let (mut done, mut bad) = (0, 0);
            progress.show(0, 0);
            for batch in rows.chunks(10) {
                let v = c.call(Method::POST, &format!("/roster/imports/{import}/rows"), Some(serde_json::to_value(batch)?)).await?;
                done += batch.len();
                bad += v["errors"].as_array().map_or(0, |a| a.len());
                progress.show(done, bad);
            }
            let v = c.call(Method::POST, &format!("/roster/imports/{import}/commit?dry_run={dry_run}"), None).await?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for e in v["errors"].as_array().into_iter().flatten() {
                    println!("line {}: {} {}: {}", s(e, "line"), s(e, "kind"), s(e, "id"), s(e, "reason"));
                }
                let counts = |k: &str| v[k].as_object().map(|m| m.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")).unwrap_or_default();
                match (v["imported"].as_bool(), dry_run) {
                    (Some(true), _) => println!("imported {} from {}", counts("imported_counts"), file.display()),
                    (_, true) if bad == 0 => println!("dry run: all {} rows are good; would import {}", rows.len(), counts("would_import")),
                    (_, true) => println!("dry run: {bad} bad row(s) of {}; nothing imported", rows.len()),
                    _ => println!("{bad} bad row(s) of {}: nothing was imported (a file is imported whole or not at all)", rows.len()),
                }
            }
            if bad > 0 {
                bail!("{bad} bad row(s)");
            }
        }
    }
    Ok(())
}
