//! The web console for administrators and grid staff, served by the daemon on
//! the LAN: password login (argon2id), a session cookie, two roles, rate-limited
//! logins, and a small static front end (`console/`, embedded) that speaks the
//! same `/api/v1` as the CLI. Every write through either is in the audit log.

use super::api::{bad, ApiError};
use super::Shared;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::clock::Timestamp;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use store::User;

type S = State<Arc<Shared>>;

pub const COOKIE: &str = "gw_session";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Staff,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "staff" => Some(Role::Staff),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Staff => "staff",
        }
    }
}

/// Who is calling the API: a console user, or the CLI with the admin token.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub role: Role,
}

struct Session {
    user: String,
    role: Role,
    expires: Timestamp,
}

/// Sessions live in memory: a restart logs everyone out, which is fine for a
/// gate box and keeps session tokens off the disk.
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
    /// Failed logins per (user, client address) and per client address, for
    /// rate limiting. Keyed by address too, so a guesser elsewhere on the LAN
    /// cannot lock the real administrator out.
    failures: Mutex<HashMap<String, Vec<Timestamp>>>,
    /// argon2id costs ~19 MiB and tens of ms per check: at most this many run
    /// at once, whatever the number of parallel logins.
    checks: tokio::sync::Semaphore,
}

/// Password checks that may run at once.
const PARALLEL_PASSWORD_CHECKS: usize = 2;

impl Default for Sessions {
    fn default() -> Self {
        Sessions { sessions: Default::default(), failures: Default::default(), checks: tokio::sync::Semaphore::new(PARALLEL_PASSWORD_CHECKS) }
    }
}

impl Sessions {
    pub fn actor(&self, token: &str, now: Timestamp) -> Option<Actor> {
        let mut m = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(token) {
            Some(s) if s.expires > now => Some(Actor { name: s.user.clone(), role: s.role }),
            Some(_) => {
                m.remove(token);
                None
            }
            None => None,
        }
    }

    /// Check the limit and count this attempt as a failure in one step,
    /// before the password is checked: parallel guesses cannot all slip
    /// under the limit. `Err(until)` while locked out.
    fn begin_attempt(&self, keys: &[String], now: Timestamp, window: chrono::Duration, max: usize) -> Result<(), Timestamp> {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Forget failures older than the window, so the map stays small.
        f.retain(|_, v| {
            v.retain(|t| now - *t < window);
            !v.is_empty()
        });
        if let Some(until) = keys.iter().filter_map(|k| f.get(k).filter(|v| v.len() >= max).map(|v| v[v.len() - max] + window)).max() {
            return Err(until);
        }
        for k in keys {
            f.entry(k.clone()).or_default().push(now);
        }
        Ok(())
    }

    /// The password was right: take back the attempt counted at `at`, and
    /// forget this user's failures from this address.
    fn succeeded(&self, keys: &[String], at: Timestamp) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.remove(&keys[0]);
        for k in &keys[1..] {
            if let Some(v) = f.get_mut(k) {
                if let Some(i) = v.iter().rposition(|t| *t == at) {
                    v.remove(i);
                }
            }
        }
    }

    fn open(&self, user: &User, role: Role, now: Timestamp, expires: Timestamp) -> String {
        let token: [u8; 32] = rand::random();
        let token = hex::encode(token);
        let mut m = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, s| s.expires > now);
        m.insert(token.clone(), Session { user: user.name.clone(), role, expires });
        token
    }

    fn close(&self, token: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(token);
    }

    /// End every session of a user (removed, or their password changed).
    pub fn close_user(&self, name: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, s| s.user != name);
    }
}

pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == COOKIE).then(|| v.to_string())
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginInput {
    pub user: String,
    pub password: String,
}

/// `POST /console/login`.
pub async fn login(State(sh): S, super::server::ClientIp(client): super::server::ClientIp, Json(i): Json<LoginInput>) -> Response {
    let c = &sh.cfg.console;
    let now = sh.clock.now();
    let window = domain::clock::chrono_dur(c.login_window.get());
    let keys = [format!("user:{}@{client}", i.user), format!("ip:{client}")];
    if let Err(until) = sh.sessions.begin_attempt(&keys, now, window, c.login_max_failures) {
        let mins = ((until - now).num_seconds() + 59) / 60;
        sh.metrics.reject("login_locked_out");
        return ApiError(StatusCode::TOO_MANY_REQUESTS, format!("登录失败次数过多，请 {mins} 分钟后再试 / too many failed logins; try again in {mins} min"))
            .into_response();
    }
    // Bounded argon2 work: wait a little for a slot, then turn the login away.
    let Ok(Ok(_permit)) = tokio::time::timeout(std::time::Duration::from_secs(5), sh.sessions.checks.acquire()).await else {
        sh.metrics.reject("login_busy");
        return ApiError(StatusCode::SERVICE_UNAVAILABLE, "登录繁忙，请稍后再试 / too many logins at once; try again".into()).into_response();
    };
    let user = sh.store.get_user(&i.user).ok().flatten();
    let password = i.password.clone();
    let phc = user.as_ref().map(|u| u.password_hash.clone());
    // argon2 is deliberately slow: off the async threads.
    let ok = tokio::task::spawn_blocking(move || match phc {
        Some(phc) => verify_password(&password, &phc),
        None => {
            // Same work for unknown users, so timing does not reveal who exists.
            let _ = hash_password(&password);
            false
        }
    })
    .await
    .unwrap_or(false);
    let (Some(user), true) = (user, ok) else {
        // Already counted by begin_attempt.
        tracing::warn!(user = %i.user, client = %client, "console login failed");
        return ApiError(StatusCode::UNAUTHORIZED, "用户名或密码错误 / wrong user name or password".into()).into_response();
    };
    let Some(role) = Role::parse(&user.role) else {
        return ApiError(StatusCode::FORBIDDEN, format!("user {} has an unknown role {:?}", user.name, user.role)).into_response();
    };
    sh.sessions.succeeded(&keys, now);
    let ttl = c.session_ttl.get();
    let token = sh.sessions.open(&user, role, now, now + domain::clock::chrono_dur(ttl));
    tracing::info!(user = %user.name, role = role.as_str(), "console login");
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}", ttl.as_secs(), secure(&sh));
    ([(header::SET_COOKIE, cookie)], Json(json!({ "user": user.name, "role": role.as_str() }))).into_response()
}

/// `POST /console/logout`.
pub async fn logout(State(sh): S, headers: HeaderMap) -> Response {
    if let Some(t) = session_cookie(&headers) {
        sh.sessions.close(&t);
    }
    ([(header::SET_COOKIE, format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}", secure(&sh)))], Json(json!({ "ok": true }))).into_response()
}

/// Behind the TLS proxy (`http.public_url` is https) the browser must never
/// send the session cookie over plain HTTP.
fn secure(sh: &Shared) -> &'static str {
    if sh.cfg.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// What staff (as opposed to admins) may do: read the operational pages,
/// acknowledge alerts and record check-ins.
pub fn staff_may(method: &axum::http::Method, path: &str) -> bool {
    let admin_only_reads = ["/audit", "/compliance", "/users", "/outbox", "/roster"];
    if method == axum::http::Method::GET {
        return !admin_only_reads.iter().any(|p| path.starts_with(p));
    }
    method == axum::http::Method::POST && (path == "/checkins" || (path.starts_with("/alerts/") && path.ends_with("/ack")))
}

// ---- users (admin API) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    pub name: String,
    pub role: String,
    pub password: String,
}

pub async fn add_user(State(sh): S, Json(i): Json<UserInput>) -> Result<Json<serde_json::Value>, ApiError> {
    if i.name.trim().is_empty() || i.name.contains(char::is_whitespace) {
        return Err(bad("a user name must be non-empty, without spaces"));
    }
    let role = Role::parse(&i.role).ok_or_else(|| bad("role must be admin or staff"))?;
    if i.password.chars().count() < 10 {
        return Err(bad("a password needs at least 10 characters"));
    }
    let password = i.password;
    let hash = tokio::task::spawn_blocking(move || hash_password(&password)).await.map_err(|e| bad(e.to_string()))?.map_err(bad)?;
    let u = User { name: i.name.trim().to_string(), role: role.as_str().into(), password_hash: hash, created_at: sh.clock.now() };
    sh.store.put_user(&u)?;
    // A changed password ends the old sessions.
    sh.sessions.close_user(&u.name);
    Ok(Json(json!({ "name": u.name, "role": u.role, "created_at": u.created_at })))
}

pub async fn list_users(State(sh): S) -> Result<Json<serde_json::Value>, ApiError> {
    let users: Vec<_> = sh.store.list_users()?.into_iter().map(|u| json!({ "name": u.name, "role": u.role, "created_at": u.created_at })).collect();
    Ok(Json(json!(users)))
}

pub async fn remove_user(State(sh): S, axum::extract::Path(name): axum::extract::Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    sh.store.remove_user(&name)?;
    sh.sessions.close_user(&name);
    Ok(Json(json!({ "removed": name })))
}

/// `GET /api/v1/me`: who the console is logged in as.
pub async fn me(State(sh): S, axum::Extension(a): axum::Extension<Actor>) -> Json<serde_json::Value> {
    let absence = sh.cfg.alert.absence.after.map(|d| d.get().as_secs_f64() / 3600.0).unwrap_or(48.0);
    Json(json!({
        "user": a.name, "role": a.role.as_str(), "site": sh.cfg.site, "site_name": sh.cfg.site_name,
        "absence_after_hours": absence, "gates": sh.cfg.gates.iter().map(|g| g.name.clone()).collect::<Vec<_>>(),
    }))
}

/// `GET /api/v1/qr.svg?data=…`: a visitor's pass as an SVG to show or print.
pub async fn qr_svg(axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let data = q.get("data").ok_or_else(|| bad("give ?data="))?;
    let code = qrcode::QrCode::new(data.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let w = code.width();
    let colors = code.to_colors();
    let quiet = 4;
    let size = w + 2 * quiet;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" shape-rendering="crispEdges"><rect width="{size}" height="{size}" fill="#fff"/><path fill="#000" d=""##
    );
    for (i, c) in colors.iter().enumerate() {
        if *c == qrcode::Color::Dark {
            svg.push_str(&format!("M{} {}h1v1h-1z", i % w + quiet, i / w + quiet));
        }
    }
    svg.push_str(r##""/></svg>"##);
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

// ---- the static front end ----

const INDEX: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

pub async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], INDEX).into_response()
}

pub async fn app_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS).into_response()
}

pub async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_stored_as_argon2id_and_only_the_right_one_verifies() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("correct horse"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batter", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn staff_read_operational_pages_and_only_ack_and_check_in() {
        use axum::http::Method;
        assert!(staff_may(&Method::GET, "/presence"));
        assert!(staff_may(&Method::POST, "/alerts/12/ack"));
        assert!(staff_may(&Method::POST, "/checkins"));
        assert!(!staff_may(&Method::GET, "/audit"));
        assert!(!staff_may(&Method::POST, "/residents"));
        assert!(!staff_may(&Method::DELETE, "/people/R1"));
    }

    #[test]
    fn logins_lock_out_after_repeated_failures_and_unlock_after_the_window() {
        let s = Sessions::default();
        let t0 = chrono::Utc::now();
        let keys = ["user:a@1.2.3.4".to_string(), "ip:1.2.3.4".to_string()];
        let w = chrono::Duration::minutes(15);
        for i in 0..5 {
            assert!(s.begin_attempt(&keys, t0, w, 5).is_ok(), "attempt {i}");
        }
        assert!(s.begin_attempt(&keys, t0 + chrono::Duration::minutes(1), w, 5).is_err());
        assert!(s.begin_attempt(&keys, t0 + chrono::Duration::minutes(16), w, 5).is_ok());
        // Another address is not locked out by this one's guesses.
        let admin = ["user:a@10.0.0.9".to_string(), "ip:10.0.0.9".to_string()];
        for _ in 0..5 {
            s.begin_attempt(&keys, t0 + chrono::Duration::minutes(17), w, 5).ok();
        }
        assert!(s.begin_attempt(&admin, t0 + chrono::Duration::minutes(17), w, 5).is_ok());
    }

    #[test]
    fn parallel_attempts_cannot_slip_under_the_limit() {
        let s = std::sync::Arc::new(Sessions::default());
        let t0 = chrono::Utc::now();
        let keys = ["user:a@1.2.3.4".to_string(), "ip:1.2.3.4".to_string()];
        let w = chrono::Duration::minutes(15);
        let passed: usize = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..40).map(|_| sc.spawn(|| s.begin_attempt(&keys, t0, w, 5).is_ok() as usize)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(passed, 5, "exactly the limit may be checked, however many arrive at once");
    }
}
