//! `gatewarden run`: wires the tasks together and owns shutdown.
//!
//! Tasks and channels (see ARCHITECTURE.md):
//! - `mqtt::run` → bounded `Parsed` channel (4096, blocks when full) → monitor
//! - admin API → bounded `Command` channel (256, blocks) → monitor
//! - monitor: owns `Presence` and `Engine`; writes the store; wakes the outbox
//! - one outbox `Worker` per channel: reads the store, sends, records outcomes

pub use crate::admin::Shared;
use crate::alert::channel::Sender;
use crate::alert::outbox::{Backoff, Worker};
use crate::alert::AckLinks;
use crate::cluster::sync::EnrolmentRole;
use crate::enrolment::Fanout;
use crate::monitor::{ClusterView, MonitorHandle};
use crate::monitor::{Handles, Monitor};
use crate::telemetry::Metrics;
use anyhow::Context as _;
use config::Config;
use domain::clock::Clock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use vision_protocol::models;

/// Build everything and run until SIGTERM / SIGINT (or `cancel`).
pub async fn run(cfg: Config, config_path: &std::path::Path, cancel: CancellationToken) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let clock = if cfg.debug.manual_clock {
        tracing::warn!("debug.manual_clock is on: the clock can be moved through the API. Never use this on a real gate");
        let c = Clock::adjustable();
        // A test restarting "the same box" starts where its clock was, as a
        // real box's wall clock would, instead of appearing to step back.
        if let Some(at) = std::env::var("GATEWARDEN_TEST_CLOCK_AT").ok().and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok()) {
            c.set(at.with_timezone(&chrono::Utc));
        }
        c
    } else {
        Clock::system()
    };
    if let Some(parent) = cfg.store.path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let store = Store::open(&cfg.store.path)?;
    // Before anything reads a secret (or would make a new one over a damaged
    // store): is this the store that ran here, whole?
    let fresh_store = verify_store(&store, &cfg)?;
    // Secrets live in key files beside the store, never in it (nor in its backups).
    let admin_token = match cfg.admin_token()? {
        Some(t) => t,
        None => {
            let path = cfg.admin_token_path();
            let t = key_file(&store, &path, "admin_token", false)?;
            tracing::info!(path = %path.display(), "admin API token in its file (the CLI reads it from there)");
            t
        }
    };
    let ack_secret = match cfg.ack_secret()? {
        Some(s) => s.into_bytes(),
        // Losing it only invalidates links already sent: reminders carry new ones.
        None => key_file(&store, &cfg.admin_token_path().with_file_name("ack.key"), "ack_link_key", false)?.into_bytes(),
    };
    if cfg.alert.ladder.is_empty() && store.list_ladders()?.is_empty() {
        tracing::warn!("no escalation ladder is configured: alerts will reach nobody. Add [[alert.ladder]] to the config");
    }
    let metrics = Arc::new(Metrics::new());
    let timeout = cfg.alert.outbox.request_timeout.get();
    let senders: HashMap<String, Sender> = cfg.alert.channels.iter().map(|c| (c.name.clone(), Sender::new(c.clone(), timeout))).collect();
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (mqtt_tx, mqtt_rx) = mpsc::channel(4096);
    let (mqtt_client, mqtt_loop) = crate::mqtt::connect(&cfg)?;
    use crate::cluster::sync::SyncKeys;
    let sync = match cfg.cluster.as_ref().and_then(|c| c.enrolment.zip(c.sync_key_file.clone())) {
        Some((EnrolmentRole::Source, file)) => {
            let signing = cfg.sync_signing_key_path();
            let keys = SyncKeys::load_source(&file, &signing).with_context(|| format!("cluster.sync_key_file {} / {}", file.display(), signing.display()))?;
            tracing::info!(public_key = %keys.public_hex(), file = %signing.display(), "enrolment source: give replicas this public key (cluster.sync_public_key)");
            Some((EnrolmentRole::Source, keys))
        }
        Some((EnrolmentRole::Replica, file)) => {
            let public = cfg.cluster.as_ref().and_then(|c| c.sync_public_key.clone()).unwrap_or_default();
            let keys = SyncKeys::load_replica(&file, &public).with_context(|| format!("cluster.sync_key_file {}", file.display()))?;
            Some((EnrolmentRole::Replica, keys))
        }
        None => None,
    };
    // A new or restored source store starts a new epoch: its versions may be
    // behind what the replicas hold, and they must not ignore it silently.
    let mut epoch = store.sync_epoch()?;
    if matches!(sync, Some((EnrolmentRole::Source, _))) && (epoch == 0 || fresh_store) {
        epoch = (chrono::Utc::now().timestamp_millis() as u64).max(epoch + 1);
        store.set_sync_epoch(epoch)?;
        tracing::warn!(epoch, "enrolment source: a new epoch (a new or restored store); replicas will take its records");
    }
    // With enrolment sync, credential hashes are keyed from the site's sync key
    // so a PIN enrolled on the source opens every box's gates.
    let credential_key = match &sync {
        Some((_, k)) => k.credentials.clone(),
        // PIN, card, QR and ID-number hashes are keyed with it: with anyone
        // enrolled, a missing key file is an error, never a new key.
        None => key_file(&store, &cfg.admin_token_path().with_file_name("credential.key"), "credential_key", store.has_people())?.into_bytes(),
    };
    // The entry log's chain key: lost, the chain can no longer be verified, so
    // with a keyed log a missing file is an error, never a new key.
    let entry_key = key_file(&store, &cfg.admin_token_path().with_file_name("entry.key"), "entry_key", store.entry_log_keyed()?)?;
    store.set_entry_key(entry_key.into_bytes());
    let rechained = store.key_entry_log()?;
    if rechained > 0 {
        tracing::info!(rechained, "entry log re-chained under its key (entry.key)");
    }
    let snapshot_key = key_file(&store, &cfg.snapshot_key_path(), "snapshot_key", false)?.into_bytes();
    let pk_file = cfg.person_keys_path();
    if !pk_file.exists() && store.has_sealed_people()? {
        anyhow::bail!(
            "person key file {} is missing but the store holds personal data sealed under it: put the file back (from where you keep the template key),              or restore the backup that goes with the keys you have. A new key file would make every enrolled person unreadable",
            pk_file.display()
        );
    }
    let person_keys = store::PersonKeys::load_or_create(&pk_file).with_context(|| format!("person key file {}", pk_file.display()))?;
    store.set_person_keys(person_keys);
    let (sealed, dropped) = store.seal_personal_data()?;
    if sealed > 0 || dropped > 0 {
        tracing::info!(sealed, orphan_keys_dropped = dropped, "personal data sealed under per-person keys");
    }
    let key_file = cfg.template_key_path();
    let keys = store::TemplateKeys::load_or_create(&key_file).with_context(|| format!("template key file {}", key_file.display()))?;
    let finish_rotation = keys.previous.is_some();
    store.set_template_keys(keys.clone());
    let resealed = store.reseal_templates()?;
    if resealed > 0 {
        tracing::info!(resealed, "face templates re-sealed under the current key");
    }
    if finish_rotation {
        // A rotation was interrupted: everything is under the new key now.
        let k = store::TemplateKeys { current: keys.current, previous: None };
        k.save(&key_file)?;
        store.set_template_keys(k);
    }
    let vision_enabled = cfg.vision.enabled.unwrap_or_else(|| cfg.gates.iter().any(|g| g.camera.is_some()));
    let (gate_tx, gate_rx) = mpsc::channel(64);
    let camera_stats: crate::gate::task::CameraStats = Default::default();
    let (vision_tx, vision_rx) = mpsc::channel(16);
    if vision_enabled {
        // Fail fast, naming the file and the fix, rather than in the child.
        for f in models::FACE_MODELS {
            models::verify(&cfg.vision.models_dir.join(f))?;
        }
        if cfg.gates.iter().any(|g| g.read_plates && g.camera.is_some()) {
            for f in models::PLATE_MODELS {
                models::verify(&cfg.vision.models_dir.join(f))?;
            }
        }
        let lib = models::library_path(&cfg.vision.models_dir, cfg.vision.ort_library.as_deref());
        anyhow::ensure!(
            lib.exists(),
            "the ONNX Runtime library {} is missing. Fix: run `bash deploy/fetch-models.sh`, or set vision.ort_library",
            lib.display()
        );
    }
    let monitor_handle = MonitorHandle::new(cmd_tx);
    let gates = (!cfg.gates.is_empty()).then(|| gate_tx.clone());
    let vision = vision_enabled.then(|| vision_tx.clone());
    let role = sync.as_ref().map(|(r, _)| *r);
    let enrolment = Fanout {
        cfg: cfg.clone(),
        store: store.clone(),
        clock: clock.clone(),
        monitor: monitor_handle.clone(),
        gates: gates.clone(),
        vision: vision.clone(),
        mqtt: Some(mqtt_client.clone()),
        sync: sync.clone(),
        epoch,
    };
    let sh = Arc::new(Shared {
        cfg: cfg.clone(),
        store: store.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
        commands: monitor_handle,
        outbox_wake: Arc::new(Notify::new()),
        senders,
        ack_secret,
        admin_token,
        device_tokens: cfg.device_tokens(),
        started: Instant::now(),
        gates,
        vision,
        credential_key: credential_key.clone(),
        mqtt: Some(mqtt_client.clone()),
        cluster: Arc::new(std::sync::RwLock::new(ClusterView {
            box_id: cfg.cluster.as_ref().map(|c| c.box_id.clone()).unwrap_or_default(),
            alerting: cfg.cluster.is_none(),
            ..Default::default()
        })),
        enrolment: enrolment.clone(),
        clock_view: Default::default(),
        ack_limit: Default::default(),
        sessions: Default::default(),
        imports: Default::default(),
    });

    if cfg.mqtt.external_addr()?.is_none() {
        crate::mqtt::start_embedded_broker(cfg.mqtt.embedded_listen)?;
    }
    let monitor = Monitor::load(Handles {
        cfg: cfg.clone(),
        store: store.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
        mqtt: sh.mqtt.clone(),
        outbox_wake: sh.outbox_wake.clone(),
        gates: sh.gates.clone(),
        cluster: sh.cluster.clone(),
        channels: sh.senders.keys().cloned().collect(),
        ack_links: AckLinks { secret: sh.ack_secret.clone(), ttl: cfg.http.ack_link_ttl.get(), base: cfg.public_url(), clock: clock.clone() },
        started: sh.started,
        cluster_key: cfg.cluster_key()?,
        clock_view: sh.clock_view.clone(),
    })?;
    let listener = tokio::net::TcpListener::bind(cfg.http.listen).await.with_context(|| format!("cannot listen on http.listen = {}", cfg.http.listen))?;
    tracing::info!(listen = %cfg.http.listen, site = %cfg.site, "gatewarden running: /healthz, /metrics, /api/v1");

    // Every long-running task, by name: none of them may end before shutdown.
    let mut tasks = tokio::task::JoinSet::new();
    let mut names: HashMap<tokio::task::Id, String> = HashMap::new();
    let beats = metrics.clone();
    let mut spawn = |tasks: &mut tokio::task::JoinSet<()>, name: &str, f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
        names.insert(tasks.spawn(crate::telemetry::beating(beats.heartbeats.register(name), f)).id(), name.to_string());
    };
    spawn(&mut tasks, "monitor", Box::pin(monitor.run(mqtt_rx, cmd_rx, cancel.clone())));
    let snapshot_dir = cfg.access.snapshot_dir.clone().unwrap_or_else(|| cfg.admin_token_path().with_file_name("snapshots"));
    let retention = crate::retention::Retention {
        cfg: cfg.clone(),
        store: store.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
        snapshot_dir: snapshot_dir.clone(),
        enrolment: enrolment.clone(),
    };
    spawn(&mut tasks, "retention", Box::pin(retention.run(cancel.clone())));
    let upkeep = crate::upkeep::Upkeep { cfg: cfg.clone(), store: store.clone(), clock: clock.clone(), metrics: metrics.clone() };
    spawn(&mut tasks, "upkeep", Box::pin(upkeep.run(cancel.clone())));
    let enrolment_tx = match role {
        Some(EnrolmentRole::Replica) => {
            let (tx, rx) = mpsc::channel(1024);
            spawn(&mut tasks, "enrolment-replica", Box::pin(crate::cluster::sync::run_replica(enrolment.clone(), metrics.clone(), rx, cancel.clone())));
            Some(tx)
        }
        Some(EnrolmentRole::Source) => {
            let fanout = enrolment.clone();
            // One-shot: it ends by design, so it is not supervised.
            tokio::spawn(async move {
                match fanout.republish().await {
                    Ok(n) => tracing::info!(records = n, "enrolment published for the replicas"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot publish enrolment"),
                }
            });
            None
        }
        None => None,
    };
    spawn(&mut tasks, "mqtt", Box::pin(crate::mqtt::run(cfg.clone(), mqtt_client.clone(), mqtt_loop, mqtt_tx, enrolment_tx, metrics.clone(), cancel.clone())));
    if !cfg.gates.is_empty() {
        let mut policy = domain::gate::policy::Policy::new(cfg.gate_settings(), cfg.gate_rules());
        for r in store.list_people()? {
            policy.upsert(r.person);
        }
        for v in store.list_vehicles()? {
            policy.upsert_vehicle(v);
        }
        let task = crate::gate::task::GateTask {
            cfg: cfg.clone(),
            store: store.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
            monitor: sh.commands.clone(),
            policy,
            actuators: cfg
                .gates
                .iter()
                .map(|g| (g.name.clone(), crate::gate::actuator::Actuator::new(g.actuator.clone(), Some(mqtt_client.clone()))))
                .collect(),
            mqtt: Some(mqtt_client.clone()),
            cameras: cfg.gates.iter().filter(|g| g.camera.is_some()).map(|g| g.name.clone()).collect(),
            camera_stats: camera_stats.clone(),
            snapshot_dir,
            snapshot_key: snapshot_key.clone(),
            credential_key,
        };
        spawn(&mut tasks, "gate", Box::pin(task.run(gate_rx, cancel.clone())));
    }
    if vision_enabled {
        let binary = match std::env::var_os("GATEWARDEN_VISION_BIN") {
            Some(p) => std::path::PathBuf::from(p),
            None => std::env::current_exe()?.with_file_name("gatewarden-vision"),
        };
        anyhow::ensure!(binary.exists(), "{} is missing: it is built and installed with gatewarden", binary.display());
        let sup = crate::gate::task::VisionSupervisor {
            binary,
            config: vision_config(config_path, &cfg)?,
            store: store.clone(),
            gates: gate_tx.clone(),
            stats: camera_stats.clone(),
            metrics: metrics.clone(),
            heartbeat_timeout: cfg.vision.heartbeat_timeout.get(),
            secret_env: cfg.mqtt.password_env.iter().cloned().collect(),
        };
        spawn(&mut tasks, "vision-supervisor", Box::pin(sup.run(vision_rx, cancel.clone())));
    }
    let backoff = Backoff { initial: cfg.alert.outbox.retry_initial.get(), max: cfg.alert.outbox.retry_max.get() };
    for s in sh.senders.values() {
        let w = Worker {
            sender: s.clone(),
            store: store.clone(),
            clock: clock.clone(),
            wake: sh.outbox_wake.clone(),
            metrics: metrics.clone(),
            backoff,
            digest_window: cfg.alert.outbox.digest_window.get(),
            digest_max: cfg.alert.outbox.digest_max,
            language: cfg.language,
        };
        spawn(&mut tasks, &format!("outbox:{}", s.name()), Box::pin(w.run(cancel.clone())));
    }
    let app = crate::admin::api::router(sh.clone());
    let c = cancel.clone();
    spawn(
        &mut tasks,
        "http",
        Box::pin(crate::admin::server::serve(
            listener,
            app,
            crate::admin::server::Limits { max_connections: cfg.http.max_connections, header_read_timeout: cfg.http.header_read_timeout.get() },
            metrics.clone(),
            c,
        )),
    );

    crate::telemetry::sd_notify("READY=1");
    let c = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        c.cancel();
    });
    // Supervision: a task that ends (a panic, or a return) before shutdown
    // leaves the box half-alive with /healthz saying ok. Stop everything and
    // exit non-zero instead, so systemd (Restart=always) starts us afresh;
    // every promise is in the store, and unacknowledged MQTT messages return.
    let died = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        // A task that ends because shutdown began is not a death.
        Some(r) = tasks.join_next_with_id() => (!cancel.is_cancelled()).then(|| match r {
            Ok((id, ())) => (names.get(&id).cloned().unwrap_or_default(), "returned".to_string()),
            Err(e) => (names.get(&e.id()).cloned().unwrap_or_default(), if e.is_panic() { "panicked".into() } else { e.to_string() }),
        }),
    };
    if let Some((task, how)) = &died {
        tracing::error!(task = %task, how = %how, "a task stopped unexpectedly: stopping the daemon so that it is restarted");
        cancel.cancel();
    }
    crate::telemetry::sd_notify("STOPPING=1");
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!("tasks did not stop within 10 s; flushing and exiting");
                break;
            }
        }
    }
    // Flushes the store, then records it; only a stop that got here is "clean".
    store.write_manifest(clock.now().timestamp(), died.is_none())?;
    if let Some((task, how)) = died {
        anyhow::bail!("the {task} task {how}; the daemon stopped so that it can be restarted (see the log above)");
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Refuse to start on a store that is not the one that ran here, or that
/// lost records (see `store::integrity`). The fix is a restore, never a
/// fresh start: that would page nobody for the elders it forgot.
/// Returns whether the store is new or restored (no manifest yet).
pub fn verify_store(store: &Store, cfg: &Config) -> anyhow::Result<bool> {
    let mut fresh = false;
    match store.check_integrity()? {
        Ok(store::Integrity::Unrecorded) => {
            fresh = true;
            tracing::info!("no integrity manifest yet (a new or restored store): recording one")
        }
        Ok(store::Integrity::Exact) => {
            tracing::info!("store matches its integrity manifest");
            return Ok(false);
        }
        Ok(store::Integrity::Newer { writes_since }) => tracing::info!(writes_since, "store is newer than its integrity manifest (not rolled back)"),
        Err(damage) => {
            let dir = cfg.store.backup_dir();
            let newest = Store::list_backups(&dir).ok().and_then(|v| v.last().cloned());
            let hint = match newest {
                Some(p) => format!("the newest scheduled backup is {}", p.display()),
                None => format!("no scheduled backup in {}", dir.display()),
            };
            anyhow::bail!(
                "the store at {} is damaged: {damage}. gatewarden will not start on it (nor make new keys over it). \
                 Fix: `gatewarden restore --config <config> <backup file>` ({hint}); `gatewarden store check` shows the details",
                cfg.store.path.display()
            );
        }
    }
    store.write_manifest(chrono::Utc::now().timestamp(), false)?;
    Ok(fresh)
}

/// What the vision process may know: its own section, the cameras and
/// logging, written to `vision.toml` (0600) beside the store. Never the admin
/// token, the store, channel or actuator secrets, or the keys.
fn vision_config(config_path: &std::path::Path, cfg: &Config) -> anyhow::Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let full: toml::Table = text.parse().with_context(|| format!("{}", config_path.display()))?;
    let mut t = toml::Table::new();
    t.insert("site".into(), toml::Value::String(cfg.site.clone()));
    // Required by the schema; the child never opens a store.
    t.insert(
        "store".into(),
        toml::Value::Table(toml::Table::from_iter([("path".to_string(), toml::Value::String("/nonexistent/gatewarden-vision-has-no-store".into()))])),
    );
    for section in ["log", "vision"] {
        if let Some(v) = full.get(section) {
            t.insert(section.into(), v.clone());
        }
    }
    const CAMERA_KEYS: [&str; 8] = ["name", "camera", "direction", "read_faces", "read_plates", "max_fps", "open_timeout", "read_timeout"];
    let gates: Vec<toml::Value> = full
        .get("gates")
        .and_then(|g| g.as_array())
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_table())
        .map(|g| {
            let mut n: toml::Table = g.iter().filter(|(k, _)| CAMERA_KEYS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
            // Required by the schema; the child never drives a gate.
            n.insert("actuator".into(), toml::Value::Table(toml::Table::from_iter([("kind".to_string(), toml::Value::String("log".into()))])));
            toml::Value::Table(n)
        })
        .collect();
    if !gates.is_empty() {
        t.insert("gates".into(), toml::Value::Array(gates));
    }
    let path = cfg.admin_token_path().with_file_name("vision.toml");
    let body = format!("# Written by gatewarden run for the vision process: cameras and models only.\n{}", toml::to_string(&t)?);
    store::write_private(&path, body.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(std::fs::canonicalize(&path)?)
}

/// A secret in its own file (0600, the service user's), outside the store:
/// read it; else move it out of the store, where versions before key files
/// kept it; else make one, unless `needed` says records already depend on it.
fn key_file(store: &Store, path: &std::path::Path, legacy: &str, needed: bool) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().chars().count() >= config::MIN_SECRET_CHARS => {
            store.forget_legacy_secret(legacy)?;
            return Ok(s.trim().to_string());
        }
        Ok(_) => anyhow::bail!("the key file {} is empty or too short: restore it from this box's key backup", path.display()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("cannot read the key file {}", path.display())),
        Err(_) => {}
    }
    let value = match store.legacy_secret(legacy)? {
        Some(v) => {
            tracing::info!(path = %path.display(), "a key kept inside the store by an older version moves to its own file");
            v
        }
        None if needed => anyhow::bail!(
            "the key file {} is missing, but the store holds records keyed or sealed with it. \
             A new key would silently lock everyone out: copy the file back from where this box's keys are kept (README: Keys and backups)",
            path.display()
        ),
        None => {
            use rand::Rng;
            hex::encode(rand::thread_rng().gen::<[u8; 32]>())
        }
    };
    store::write_private(path, value.as_bytes()).with_context(|| format!("cannot write the key file {}", path.display()))?;
    // Only once the file is durable does the store forget its copy.
    store.forget_legacy_secret(legacy)?;
    Ok(value)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
