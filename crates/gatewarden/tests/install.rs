//! deploy/install.sh in a throwaway Debian 12 root made by debootstrap: it
//! installs runtime packages only, creates the service user and a tight
//! layout, verifies the models, and the installed box runs: the vision check
//! sees a face as the service user, and the daemon serves /healthz from the
//! installed binary and config. Re-running it (an upgrade) keeps config and data.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?} failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    o
}

fn out(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A Debian 12 minbase root with systemd (as on any gateway box), debootstrapped
/// once and cached as a tarball under target/ (one builder at a time).
fn base_tarball(scratch: &Path) -> PathBuf {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bookworm-minbase-systemd.tar");
    if !cache.exists() {
        let build = scratch.join("build");
        run(Command::new("debootstrap")
            .args(["--variant=minbase", "--include=systemd", "bookworm"])
            .arg(&build)
            .arg("http://deb.debian.org/debian")
            .stdout(Stdio::null()));
        run(Command::new("tar").arg("-C").arg(&build).arg("-cf").arg(cache.with_extension("partial")).arg("."));
        std::fs::rename(cache.with_extension("partial"), &cache).unwrap();
        std::fs::remove_dir_all(&build).unwrap();
    }
    cache
}

fn throwaway_root(dir: &Path) -> PathBuf {
    let cache = base_tarball(dir);
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new("tar").arg("-C").arg(&root).arg("-xf").arg(&cache));
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).ok();
    root
}

/// /proc for the chroot (ONNX Runtime reads the CPU topology), unmounted on drop.
struct ProcMount(PathBuf);
impl ProcMount {
    fn new(root: &Path) -> ProcMount {
        run(Command::new("mount").args(["-t", "proc", "proc"]).arg(root.join("proc")));
        ProcMount(root.join("proc"))
    }
}
impl Drop for ProcMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The layout both the install script and the image produce.
const VISION_CHECK: &str = "site = \"t\"\n[store]\npath = \"/var/lib/gatewarden/db\"\n[vision]\nmodels_dir = \"/usr/share/gatewarden/models\"\n";

fn installed_config(http: u16, mqtt: u16) -> String {
    format!("site = \"t\"\n[store]\npath = \"/var/lib/gatewarden/db\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n[mqtt]\nbroker = \"mqtt://127.0.0.1:{mqtt}\"\n")
}

fn chroot(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root).args(args).env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    c
}

fn copy_tree(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_install_script_makes_a_working_locked_down_layout_in_a_fresh_debian_root() {
    let is_root = unsafe { libc::geteuid() } == 0;
    let have = |b: &str| Command::new("sh").args(["-c", &format!("command -v {b}")]).stdout(Stdio::null()).status().unwrap().success();
    if !is_root || !have("debootstrap") {
        // deploy/gw.sh test installs debootstrap and CI runs as root; a developer's
        // unprivileged `cargo test` cannot make a root filesystem.
        eprintln!("SKIPPED: needs root and debootstrap");
        return;
    }
    let manifest = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let dir = tempfile::Builder::new().prefix("gw-install").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = throwaway_root(dir.path());
    let _proc = ProcMount::new(&root);

    // What a release tarball holds: the binaries, deploy/, config/, models/, README.md.
    let src = root.join("opt/gatewarden-src");
    std::fs::create_dir_all(src.join("target/release")).unwrap();
    for d in ["deploy", "config", "models", "README.md"] {
        copy_tree(&manifest.join(d), &src);
    }
    for (name, path) in [("gatewarden", env!("CARGO_BIN_EXE_gatewarden")), ("gatewarden-vision", common::vision_bin())] {
        std::fs::copy(path, src.join("target/release").join(name)).unwrap();
    }
    let face = shared_testdata("faces/people/img2.jpg").expect("../shared/testdata");
    std::fs::copy(&face, root.join("tmp/face.jpg")).unwrap();

    let o = run(&mut chroot(&root, &["bash", "/opt/gatewarden-src/deploy/install.sh"]));
    let log = out(&o);
    assert!(log.contains("vision OK"), "{log}");
    assert!(log.contains("installed."), "{log}");

    // The service user: no shell, no home of its own, in gpio and video, not root.
    let pw = out(&run(&mut chroot(&root, &["getent", "passwd", "gatewarden"])));
    assert!(pw.trim_end().ends_with(":/var/lib/gatewarden:/usr/sbin/nologin"), "{pw}");
    let groups = out(&run(&mut chroot(&root, &["id", "-nG", "gatewarden"])));
    for g in ["gatewarden", "gpio", "video"] {
        assert!(groups.split_whitespace().any(|x| x == g), "{groups}");
    }
    let gid = |name: &str| -> u32 {
        let line = out(&run(&mut chroot(&root, &["getent", "group", name])));
        line.split(':').nth(2).unwrap().parse().unwrap()
    };
    let uid: u32 = pw.split(':').nth(2).unwrap().parse().unwrap();
    assert_ne!(uid, 0);

    // Tight permissions.
    let meta = |p: &str| std::fs::metadata(root.join(p.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{p}: {e}"));
    let mode = |p: &str| meta(p).permissions().mode() & 0o7777;
    assert_eq!((mode("/etc/gatewarden"), meta("/etc/gatewarden").uid(), meta("/etc/gatewarden").gid()), (0o750, 0, gid("gatewarden")));
    assert_eq!((mode("/etc/gatewarden/gatewarden.toml"), meta("/etc/gatewarden/gatewarden.toml").uid()), (0o640, 0));
    assert_eq!((mode("/var/lib/gatewarden"), meta("/var/lib/gatewarden").uid()), (0o750, uid));
    assert_eq!(mode("/usr/bin/gatewarden"), 0o755);
    assert_eq!(mode("/usr/bin/gatewarden-vision"), 0o755);
    assert!(root.join("etc/udev/rules.d/60-gatewarden-gpio.rules").exists());

    // Every model in the manifest is in place with its pinned hash.
    for line in std::fs::read_to_string(manifest.join("models/MANIFEST.tsv")).unwrap().lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let got = out(&run(Command::new("sha256sum").arg(root.join("usr/share/gatewarden/models").join(cols[0]))));
        assert!(got.starts_with(cols[1]), "{}: {got}", cols[0]);
    }
    assert!(root.join("usr/share/gatewarden/models/onnxruntime/libonnxruntime.so.1.31.1").exists());

    // Runtime packages only: no compiler, no -dev headers.
    let dpkg = out(&run(&mut chroot(&root, &["dpkg-query", "-W", "-f", "${Package}\n"])));
    assert!(dpkg.lines().any(|p| p.starts_with("libopencv-videoio4")), "OpenCV runtime installed");
    for p in dpkg.lines() {
        assert!(!p.ends_with("-dev") && p != "gcc" && p != "clang", "build package {p} in a runtime install");
    }

    // OpenCV and ONNX Runtime work for the service user: a real photo, one face.
    let check_cfg = VISION_CHECK;
    std::fs::write(root.join("tmp/check.toml"), check_cfg).unwrap();
    let o = run(&mut chroot(
        &root,
        &[
            "setpriv",
            "--reuid=gatewarden",
            "--regid=gatewarden",
            "--init-groups",
            "/usr/bin/gatewarden-vision",
            "--config",
            "/tmp/check.toml",
            "--check",
            "--photo",
            "/tmp/face.jpg",
        ],
    ));
    assert!(out(&o).contains("1 face(s), 1 usable"), "{}", out(&o));

    // The installed daemon runs as the service user from /var/lib/gatewarden.
    let broker = Mosquitto::start();
    let http = free_port();
    let cfg = installed_config(http, broker.port);
    std::fs::write(root.join("etc/gatewarden/gatewarden.toml"), cfg).unwrap();
    let mut daemon = chroot(
        &root,
        &["setpriv", "--reuid=gatewarden", "--regid=gatewarden", "--init-groups", "/usr/bin/gatewarden", "run", "--config", "/etc/gatewarden/gatewarden.toml"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let health = eventually("the installed daemon's /healthz", 30, async || {
        let r = reqwest::get(format!("http://127.0.0.1:{http}/healthz")).await.ok()?;
        r.json::<serde_json::Value>().await.ok()
    })
    .await;
    assert_eq!(health["store"], true, "{health}");
    Command::new("sh").args(["-c", &format!("kill -TERM {}", daemon.id())]).status().unwrap();
    assert!(daemon.wait().unwrap().success(), "clean exit on SIGTERM");
    let token = root.join("var/lib/gatewarden/admin.token");
    assert_eq!((std::fs::metadata(&token).unwrap().uid(), std::fs::metadata(&token).unwrap().permissions().mode() & 0o777), (uid, 0o600));

    // An upgrade (the script again) keeps the config and the data.
    let o = run(&mut chroot(&root, &["bash", "/opt/gatewarden-src/deploy/install.sh", "--no-apt"]));
    assert!(out(&o).contains("keeping /etc/gatewarden/gatewarden.toml"), "{}", out(&o));
    assert!(std::fs::read_to_string(root.join("etc/gatewarden/gatewarden.toml")).unwrap().contains(&format!("127.0.0.1:{http}")));
    assert!(root.join("var/lib/gatewarden/db").exists() && token.exists());

    // The installed unit passes the box's own systemd checks (the GPIO group exists there).
    let v = chroot(&root, &["systemd-analyze", "verify", "/etc/systemd/system/gatewarden.service"]).output().unwrap();
    let text = out(&v);
    let problems: Vec<&str> = text.lines().filter(|l| l.contains("gatewarden.service")).collect();
    assert!(v.status.success() && problems.is_empty(), "systemd-analyze verify: {text}");
}

/// deploy/Dockerfile, built on a local Debian 12 base (imported from the same
/// debootstrap tarball, so nothing is pulled from a registry): the container
/// runs the daemon as the service user, serves /healthz, sees a face, and
/// stops cleanly on `docker stop`.
/// A wristband-only box: a bare Debian 12 root with no OpenCV and no ONNX
/// Runtime. The daemon binary alone resolves every library it needs there,
/// starts, serves /healthz with MQTT connected and stops cleanly, because it
/// reaches vision only through `vision-protocol` (deploy/check-deps.sh).
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_runs_on_a_box_without_opencv() {
    let is_root = unsafe { libc::geteuid() } == 0;
    let have = |b: &str| Command::new("sh").args(["-c", &format!("command -v {b}")]).stdout(Stdio::null()).status().unwrap().success();
    if !is_root || !have("debootstrap") {
        eprintln!("SKIPPED: needs root and debootstrap");
        return;
    }
    let dir = tempfile::Builder::new().prefix("gw-noopencv").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = throwaway_root(dir.path());
    let _proc = ProcMount::new(&root);
    let libs = out(&run(&mut chroot(&root, &["sh", "-c", "ls /usr/lib/*/ /lib/*/ 2>/dev/null"])));
    assert!(!libs.contains("libopencv") && !libs.contains("libonnxruntime"), "the bare root must lack OpenCV");
    std::fs::copy(env!("CARGO_BIN_EXE_gatewarden"), root.join("usr/local/bin/gatewarden")).unwrap();
    let ldd = out(&run(&mut chroot(&root, &["ldd", "/usr/local/bin/gatewarden"])));
    assert!(!ldd.contains("not found") && !ldd.contains("opencv"), "{ldd}");

    let broker = Mosquitto::start();
    let http = free_port();
    std::fs::create_dir_all(root.join("var/lib/gatewarden")).unwrap();
    std::fs::write(root.join("tmp/wristband-only.toml"), installed_config(http, broker.port)).unwrap();
    let daemon = chroot(&root, &["/usr/local/bin/gatewarden", "run", "--config", "/tmp/wristband-only.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let health = eventually("the daemon's /healthz on a box without OpenCV", 30, async || {
        let r = reqwest::get(format!("http://127.0.0.1:{http}/healthz")).await.ok()?;
        let v = r.json::<serde_json::Value>().await.ok()?;
        (v["mqtt_connected"] == true).then_some(v)
    })
    .await;
    assert_eq!(health["store"], true, "{health}");
    Command::new("sh").args(["-c", &format!("kill -TERM {}", daemon.id())]).status().unwrap();
    let o = daemon.wait_with_output().unwrap();
    assert!(o.status.success(), "clean exit on SIGTERM: {}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_image_runs_the_daemon_as_the_service_user() {
    let docker_up = Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
    let is_root = unsafe { libc::geteuid() } == 0;
    if !docker_up || !is_root || Command::new("sh").args(["-c", "command -v debootstrap"]).stdout(Stdio::null()).status().map(|s| !s.success()).unwrap_or(true)
    {
        eprintln!("SKIPPED: needs a running docker daemon, root and debootstrap (deploy/gw.sh test sets them up)");
        return;
    }
    let manifest = common::repo_root();
    let manifest = manifest.as_path();
    let cache = base_tarball(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap().path());
    let tag = format!("gatewarden-test:{}", std::process::id());
    run(Command::new("docker").args(["import"]).arg(&cache).arg("gatewarden-test-base:bookworm").stdout(Stdio::null()));
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_gatewarden")).parent().unwrap().strip_prefix(manifest).unwrap().to_owned();
    let o = run(Command::new("docker")
        .args(["build", "--network", "host", "-q", "-f", "deploy/Dockerfile", "--build-arg", "BASE=gatewarden-test-base:bookworm"])
        .arg("--build-arg")
        .arg(format!("BIN_DIR={}", bin_dir.display()))
        .args(["-t", &tag, "."])
        .current_dir(manifest));
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &format!("{}-run", self.0.replace(':', "-"))]).output();
            let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
        }
    }
    let _cleanup = Cleanup(tag.clone());
    assert!(!out(&o).trim().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let face = shared_testdata("faces/people/img2.jpg").expect("../shared/testdata");
    std::fs::copy(&face, dir.path().join("face.jpg")).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.path().join("face.jpg"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let check = VISION_CHECK;
    std::fs::write(dir.path().join("check.toml"), check).unwrap();
    std::fs::set_permissions(dir.path().join("check.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(Command::new("docker").args(["run", "--rm", "--network", "host", "-v"]).arg(format!("{}:/check:ro", dir.path().display())).args([
        "--entrypoint",
        "/usr/bin/gatewarden-vision",
        &tag,
        "--config",
        "/check/check.toml",
        "--check",
        "--photo",
        "/check/face.jpg",
    ]));
    assert!(out(&o).contains("1 face(s), 1 usable"), "{}", out(&o));

    let broker = Mosquitto::start();
    let http = free_port();
    let cfg = installed_config(http, broker.port);
    std::fs::write(dir.path().join("gatewarden.toml"), cfg).unwrap();
    std::fs::set_permissions(dir.path().join("gatewarden.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let name = format!("{}-run", tag.replace(':', "-"));
    run(Command::new("docker")
        .args(["run", "-d", "--name", &name, "--network", "host", "-v"])
        .arg(format!("{}/gatewarden.toml:/etc/gatewarden/gatewarden.toml:ro", dir.path().display()))
        .arg(&tag));
    // /healthz answers before the first MQTT connect completes: wait for the connection, not the port.
    let health = eventually("the container's /healthz with MQTT connected", 30, async || {
        let r = reqwest::get(format!("http://127.0.0.1:{http}/healthz")).await.ok()?;
        let v = r.json::<serde_json::Value>().await.ok()?;
        (v["mqtt_connected"] == true).then_some(v)
    })
    .await;
    assert_eq!(health["store"], true, "{health}");
    let user = out(&run(Command::new("docker").args(["exec", &name, "id", "-un"])));
    assert_eq!(user.trim(), "gatewarden");
    run(Command::new("docker").args(["stop", "-t", "20", &name]));
    let code = out(&run(Command::new("docker").args(["inspect", "-f", "{{.State.ExitCode}}", &name])));
    assert_eq!(code.trim(), "0", "clean exit on docker stop; logs:\n{}", out(&Command::new("docker").args(["logs", &name]).output().unwrap()));
}
