//! The one binary: `gatewarden run` is the daemon; every other subcommand is
//! a tool for administrators that talks to it.

use clap::{Parser, Subcommand};
use config::Config;
use gatewarden::admin::cli::{
    self, AlertsCmd, Client, Conn, ElderCmd, EscalationCmd, KeysCmd, LeaveCmd, LogCmd, ResidentCmd, StaffCmd, VehicleCmd, VisitorCmd, WristbandCmd,
};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "gatewarden", version, about = "Compound gate and elder-wristband daemon", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon.
    Run {
        #[arg(long, short, env = "GATEWARDEN_CONFIG", default_value = "/etc/gatewarden/gatewarden.toml")]
        config: PathBuf,
    },
    /// Run the self-contained demo: daemon, embedded broker, a local webhook
    /// sink that prints what staff would receive, and a scripted scenario.
    Demo {
        #[arg(long, short, default_value = "config/demo.toml")]
        config: PathBuf,
        /// Exit when the scenario has played instead of running on.
        #[arg(long)]
        exit_after_scenario: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Store tools. Offline: stop the daemon first (sled is single-process).
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// Unknown-face snapshots (sealed at rest).
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
    /// Elders under wristband watch.
    Elder {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: ElderCmd,
    },
    /// Staff who receive and acknowledge alerts.
    Staff {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: StaffCmd,
    },
    /// Escalation ladders per grid.
    Escalation {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: EscalationCmd,
    },
    /// Planned absences (leaves).
    Leave {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: LeaveCmd,
    },
    /// Record a staff visit ("visited, all well"): counts as a sighting.
    Checkin {
        #[command(flatten)]
        conn: Conn,
        elder: String,
        #[arg(long)]
        by: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Alerts, acknowledgements, channels and the outbox.
    Alerts {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: AlertsCmd,
    },
    /// Elders by time since last seen, longest first.
    Presence {
        #[command(flatten)]
        conn: Conn,
    },
    /// The BLE gateway inventory: display name, id, last heard, offline.
    Gateways {
        #[command(flatten)]
        conn: Conn,
    },
    /// Residents and everyone else enrolled for gate access.
    Resident {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: ResidentCmd,
    },
    /// Privacy and compliance: `compliance report`.
    Compliance {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: ComplianceCmd,
    },
    /// The key that seals face templates at rest.
    Keys {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Vehicles allowed through the barrier.
    Vehicle {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: VehicleCmd,
    },
    /// Visitor passes.
    Visitor {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: VisitorCmd,
    },
    /// MQTT tools: `mqtt sniff` shows what the gateways publish and whether it is read.
    Mqtt {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: MqttCmd,
    },
    /// The entry log.
    Log {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: LogCmd,
    },
    /// Present a credential at a gate: `gate present north --pin 123456`.
    Gate {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: GateCmd,
    },
    /// Write a consistent snapshot of the running daemon's store to a file.
    Backup {
        #[command(flatten)]
        conn: Conn,
        /// Output file (default: gatewarden-<date>.gwbak in the current directory).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Replace the store with a backup. Stop the daemon first; the old store
    /// is kept beside it as <store>.pre-restore-<time>.
    Restore {
        #[arg(long, short, env = "GATEWARDEN_CONFIG", default_value = "/etc/gatewarden/gatewarden.toml")]
        config: PathBuf,
        file: PathBuf,
        /// Restore even though the face templates were sealed with a template
        /// key other than this box's (faces will then need re-enrolment).
        #[arg(long)]
        allow_key_mismatch: bool,
    },
    /// Roster import and export (CSV or XLSX).
    Roster {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: cli::RosterCmd,
    },
    /// Web console users.
    User {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: cli::UserCmd,
    },
    /// The audit log: who changed what, and when.
    Audit {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Wristbands.
    Wristbands {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: WristbandCmd,
    },
}

#[derive(Subcommand, Debug)]
enum ComplianceCmd {
    /// Stored faces, consent, face-free credentials, retention and purges.
    Report,
}

#[derive(Subcommand, Debug)]
enum GateCmd {
    Present {
        gate: String,
        #[arg(long, group = "cred")]
        pin: Option<String>,
        #[arg(long, group = "cred")]
        card: Option<String>,
        #[arg(long, group = "cred")]
        qr: Option<String>,
        /// A plate typed in by the guard (or sent by an external plate camera).
        #[arg(long, group = "cred")]
        plate: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum MqttCmd {
    /// Listen to the configured broker and print, per topic: messages, the
    /// format detected (or why none), band identities and whether each is enrolled.
    Sniff {
        /// How long to listen.
        #[arg(long = "for", default_value = "30s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Also listen to this topic filter (repeatable), e.g. '#'.
        #[arg(long)]
        topic: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Check a config file; prints every problem with its key path.
    Check { file: PathBuf },
}

#[derive(Subcommand, Debug)]
enum SnapshotCmd {
    /// Decrypt one sealed snapshot to a JPEG (reads `snapshot.key`; run on the box).
    Open {
        #[arg(long, short, env = "GATEWARDEN_CONFIG", default_value = "/etc/gatewarden/gatewarden.toml")]
        config: PathBuf,
        /// A `*.jpg.sealed` file from the snapshot directory.
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Read every record, compare the critical trees with the integrity
    /// manifest, and list the scheduled backups. Exit 0 when whole, 1 when damaged.
    Check {
        #[arg(long, short, env = "GATEWARDEN_CONFIG", default_value = "/etc/gatewarden/gatewarden.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    // glibc gives each thread its own malloc arena; on a small box that shows up
    // as tens of MB of RSS for nothing. One arena is plenty for this daemon: it does little allocation in parallel.
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    let client = |c: &Conn| Client::new(c);
    match cmd {
        Cmd::Run { config } => {
            let cfg = load(&config)?;
            gatewarden::telemetry::init_logging(&cfg.log);
            gatewarden::daemon::run(cfg, &config, tokio_util::sync::CancellationToken::new()).await?;
        }
        Cmd::Demo { config, exit_after_scenario } => {
            let cfg = load(&config)?;
            gatewarden::telemetry::init_logging(&cfg.log);
            gatewarden::demo::run(cfg, &config, exit_after_scenario).await?;
        }
        Cmd::Config { cmd: ConfigCmd::Check { file } } => {
            return Ok(match Config::load(&file) {
                Ok(_) => {
                    println!("{}: OK", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            });
        }
        Cmd::Store { cmd: StoreCmd::Check { config } } => return store_check(&config),
        Cmd::Snapshot { cmd: SnapshotCmd::Open { config, file, out } } => {
            let cfg = load(&config)?;
            let key = std::fs::read_to_string(cfg.snapshot_key_path()).map_err(|e| anyhow::anyhow!("{}: {e}", cfg.snapshot_key_path().display()))?;
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let sealed = std::fs::read(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let jpeg = store::open_blob(key.trim().as_bytes(), &name, &sealed)
                .ok_or_else(|| anyhow::anyhow!("{} does not open with this box's snapshot key (another box's, renamed, or damaged)", file.display()))?;
            store::write_private(&out, &jpeg)?;
            println!("{} → {} ({} bytes)", file.display(), out.display(), jpeg.len());
        }
        Cmd::Elder { conn, cmd } => cli::elder(&client(&conn)?, cmd).await?,
        Cmd::Staff { conn, cmd } => cli::staff(&client(&conn)?, cmd).await?,
        Cmd::Escalation { conn, cmd } => cli::escalation(&client(&conn)?, cmd).await?,
        Cmd::Leave { conn, cmd } => cli::leave(&client(&conn)?, cmd).await?,
        Cmd::Checkin { conn, elder, by, note } => cli::check_in(&client(&conn)?, elder, by, note).await?,
        Cmd::Alerts { conn, cmd } => cli::alerts(&client(&conn)?, cmd).await?,
        Cmd::Presence { conn } => cli::presence(&client(&conn)?).await?,
        Cmd::Gateways { conn } => cli::gateways(&client(&conn)?).await?,
        Cmd::Wristbands { conn, cmd } => cli::wristbands(&client(&conn)?, cmd).await?,
        Cmd::Resident { conn, cmd } => cli::resident(&client(&conn)?, cmd).await?,
        Cmd::Visitor { conn, cmd } => cli::visitor(&client(&conn)?, cmd).await?,
        Cmd::Log { conn, cmd } => cli::log(&client(&conn)?, cmd).await?,
        Cmd::Mqtt { conn, cmd: MqttCmd::Sniff { duration, topic } } => mqtt_sniff(&conn, duration, &topic).await?,
        Cmd::Vehicle { conn, cmd } => cli::vehicle(&client(&conn)?, cmd).await?,
        Cmd::Keys { conn, cmd } => cli::keys(&client(&conn)?, cmd).await?,
        Cmd::Backup { conn, out } => {
            let out = out.unwrap_or_else(|| PathBuf::from(format!("gatewarden-{}.gwbak", chrono::Utc::now().format("%Y%m%d-%H%M%S"))));
            cli::backup(&client(&conn)?, &out).await?
        }
        Cmd::Roster { conn, cmd } => cli::roster(&client(&conn)?, cmd).await?,
        Cmd::User { conn, cmd } => cli::user(&client(&conn)?, cmd).await?,
        Cmd::Audit { conn, limit } => cli::audit(&client(&conn)?, limit).await?,
        Cmd::Restore { config, file, allow_key_mismatch } => restore(&config, &file, allow_key_mismatch)?,
        Cmd::Compliance { conn, cmd: ComplianceCmd::Report } => cli::compliance(&client(&conn)?).await?,
        Cmd::Gate { conn, cmd: GateCmd::Present { gate, pin, card, qr, plate } } => {
            let (kind, value) = match (pin, card, qr, plate) {
                (Some(p), ..) => ("pin", p),
                (_, Some(c), ..) => ("card", c),
                (_, _, Some(q), _) => ("qr", q),
                (.., Some(p)) => ("plate", p),
                _ => anyhow::bail!("give --pin, --card, --qr or --plate"),
            };
            cli::present(&client(&conn)?, &gate, kind, &value).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gatewarden store check`: offline, read-only apart from sled's own recovery.
async fn mqtt_sniff(conn: &Conn, duration: std::time::Duration, extra: &[String]) -> anyhow::Result<()> {
    use gatewarden::mqtt::sniff;
    let cfg = Config::load(&conn.config)?;
    // The roster comes from the daemon (sled is single-process); without it
    // the report still shows formats and identities.
    let enrolled = match Client::new(conn) {
        Ok(c) => c.call(reqwest::Method::GET, "/elders", None).await.ok().map(|v| sniff::enrolled_from(&v)),
        Err(_) => None,
    };
    let report = sniff::listen(&cfg, duration, extra).await?;
    if conn.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render(enrolled.as_ref()));
    }
    Ok(())
}

fn store_check(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let cfg = load(config)?;
    anyhow::ensure!(cfg.store.path.exists(), "there is no store at {} (store.path)", cfg.store.path.display());
    let store = store::Store::open(&cfg.store.path)?;
    println!("store {}", cfg.store.path.display());
    let mut whole = true;
    match store.tree_counts() {
        Ok(counts) => {
            for (tree, n) in counts.iter().filter(|(t, _)| !t.starts_with("__sled")) {
                println!("  {tree:<18} {n:>8} records");
            }
        }
        Err(e) => {
            whole = false;
            println!("  UNREADABLE: {e}");
        }
    }
    println!("generation {}", store.generation()?);
    match store.check_integrity()? {
        Ok(store::Integrity::Exact) => println!("integrity: matches its manifest exactly"),
        Ok(store::Integrity::Newer { writes_since }) => println!("integrity: {writes_since} writes since its manifest, not rolled back"),
        Ok(store::Integrity::Unrecorded) => println!("integrity: no manifest yet (a new or restored store)"),
        Err(d) => {
            whole = false;
            println!("integrity: DAMAGED: {d}");
        }
    }
    let dir = cfg.store.backup_dir();
    let backups = store::Store::list_backups(&dir).unwrap_or_default();
    println!("scheduled backups in {}: {}", dir.display(), backups.len());
    for b in &backups {
        let ok = std::fs::read(b).map_err(|e| e.to_string()).and_then(|bytes| store::Store::verify_backup(&bytes).map_err(|e| e.to_string()));
        match ok {
            Ok(h) => println!("  {} ({} records)", b.display(), h.records),
            Err(e) => println!("  {} UNUSABLE: {e}", b.display()),
        }
    }
    if whole {
        println!("OK");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("DAMAGED: restore the newest good backup with `gatewarden restore --config {} <file>`", config.display());
        Ok(ExitCode::from(1))
    }
}

/// Offline: sled is single-process, so restore works on a stopped daemon's store.
fn restore(config: &std::path::Path, file: &std::path::Path, allow_key_mismatch: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let cfg = load(config)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let header = store::Store::verify_backup(&bytes).with_context(|| format!("{} cannot be restored", file.display()))?;
    if let Some(fp) = &header.key_fingerprint {
        let key_file = cfg.template_key_path();
        // Read the key only if it exists: restore must not create one.
        let ours = key_file.exists().then(|| store::TemplateKeys::load_or_create(&key_file).ok()).flatten().map(|k| store::key_fingerprint(&k.current));
        if ours.as_deref() != Some(fp.as_str()) && !allow_key_mismatch {
            anyhow::bail!(
                "the backup's face templates are sealed with template key {fp}, but {} holds {}. Copy the template key file from the \
                 box the backup came from, or pass --allow-key-mismatch and re-enrol faces",
                key_file.display(),
                ours.as_deref().unwrap_or("no key")
            );
        }
    }
    let (header, kept) = store::Store::restore(&bytes, &cfg.store.path, chrono::Utc::now().timestamp())?;
    println!(
        "restored {} records (schema {}, taken at {}) into {}.",
        header.records,
        header.schema,
        chrono::DateTime::from_timestamp(header.created, 0).map(|t| t.to_rfc3339()).unwrap_or_default(),
        cfg.store.path.display()
    );
    if let Some(old) = kept {
        println!("the previous store is kept at {}; delete it once the daemon runs well.", old.display());
    }
    Ok(())
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}
