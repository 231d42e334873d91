//! The shipped mosquitto ACL and bridge settings, on real brokers: BLE
//! gateways may only publish sightings, relays only receive gate commands, and
//! events published while the uplink is down reach the district afterwards.

mod common;
use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn deploy(f: &str) -> String {
    std::fs::read_to_string(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("deploy/mosquitto").join(f)).unwrap()
}

/// A mosquitto child that is killed and reaped when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(conf: &Path, port: u16) -> Broker {
    let c = Command::new("mosquitto").arg("-c").arg(conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker(c)
}

/// Subscribe as `user` and collect what arrives on `filter`.
async fn client(port: u16, user: &str, filter: Option<&str>) -> (AsyncClient, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let mut o = MqttOptions::new(format!("{user}-{}", free_port()), "127.0.0.1", port);
    o.set_credentials(user, "pw");
    o.set_clean_session(false);
    let (c, mut ev) = AsyncClient::new(o, 100);
    if let Some(f) = filter {
        c.subscribe(f, QoS::AtLeastOnce).await.unwrap();
    }
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => g.lock().unwrap().push(format!("{} {}", p.topic, String::from_utf8_lossy(&p.payload))),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    (c, got)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_acl_lets_gateways_publish_only_sightings_and_relays_only_receive_commands() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pw = dir.path().join("passwd");
    for (i, u) in ["gatewarden", "blegateway", "reader", "relay"].iter().enumerate() {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c"); // create the file with the first user
        }
        assert!(cmd.arg("-b").arg(&pw).args([*u, "pw"]).status().unwrap().success());
    }
    let acl = dir.path().join("acl");
    std::fs::write(&acl, deploy("gatewarden.acl")).unwrap();
    let conf = dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!("per_listener_settings false\nallow_anonymous false\npassword_file {}\nacl_file {}\nlistener {port} 127.0.0.1\n", pw.display(), acl.display()),
    )
    .unwrap();
    let broker = mosquitto(&conf, port);

    let (_daemon, seen) = client(port, "gatewarden", Some("#")).await;
    let (_relay, relay_got) = client(port, "relay", Some("#")).await;
    let (gw, _) = client(port, "blegateway", None).await;
    gw.publish("home/gw1/BTtoMQTT/C3A1F0001101", QoS::AtLeastOnce, false, r#"{"id":"C3:A1:F0:00:11:01"}"#).await.unwrap();
    gw.publish("shellies/gate-north/relay/0/command", QoS::AtLeastOnce, false, "on").await.unwrap(); // not allowed
    let (daemon_pub, _) = client(port, "gatewarden", None).await;
    daemon_pub.publish("shellies/gate-north/relay/0/command", QoS::AtLeastOnce, false, "on").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().any(|m| m.starts_with("home/gw1/BTtoMQTT/")), "the daemon gets sightings: {seen:?}");
    let relay_got = relay_got.lock().unwrap().clone();
    assert_eq!(relay_got, vec!["shellies/gate-north/relay/0/command on".to_string()], "only the daemon's command reaches the relay");
    assert!(!seen.iter().any(|m| m.starts_with("home/gw1/BTtoMQTT/") && relay_got.contains(m)), "the relay sees no sightings");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_published_while_the_uplink_is_down_reach_the_district_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (local_port, central_port) = (free_port(), free_port());
    let central_conf = dir.path().join("central.conf");
    // The district keeps its subscribers' sessions across a restart.
    std::fs::write(
        &central_conf,
        format!("listener {central_port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n", dir.path().display()),
    )
    .unwrap();
    // The shipped bridge settings, pointed at the loopback "district" without TLS or credentials.
    let bridge: String = deploy("bridge.conf")
        .lines()
        .filter(|l| !l.starts_with("bridge_cafile") && !l.starts_with("remote_username") && !l.starts_with("remote_password"))
        .map(|l| if l.starts_with("address") { format!("address 127.0.0.1:{central_port}") } else { l.to_string() })
        .map(|l| if l.starts_with("restart_timeout") { "restart_timeout 1 2".to_string() } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let local_conf = dir.path().join("local.conf");
    std::fs::write(&local_conf, format!("listener {local_port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000\n{bridge}\n"))
        .unwrap();
    let mut central = mosquitto(&central_conf, central_port);
    let local = mosquitto(&local_conf, local_port);
    // A district subscriber with a persistent session.
    let mut o = MqttOptions::new("district-dashboard", "127.0.0.1", central_port);
    o.set_clean_session(false);
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    #[allow(clippy::async_yields_async)] // the task handle is the point: the caller aborts it
    let spawn_sub = |o: MqttOptions, got: std::sync::Arc<std::sync::Mutex<Vec<String>>>| async move {
        let (c, mut ev) = AsyncClient::new(o, 100);
        c.subscribe("gatewarden/#", QoS::AtLeastOnce).await.unwrap();
        tokio::spawn(async move {
            let _keep = c;
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => got.lock().unwrap().push(String::from_utf8_lossy(&p.payload).to_string()),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
    };
    let first = spawn_sub(o.clone(), got.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = Publisher::connect(local_port).await;
    p.publish("gatewarden/t/gate/north/event", "before").await;
    eventually("the bridge forwards", 15, async || got.lock().unwrap().contains(&"before".to_string()).then_some(())).await;

    // Cut the uplink: the district broker goes away (and its dashboard with it).
    first.abort();
    Command::new("sh").args(["-c", &format!("kill -TERM {}", central.0.id())]).status().unwrap();
    let _ = central.0.wait();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..20 {
        p.publish("gatewarden/t/gate/north/event", format!("during-{i}")).await;
    }
    p.publish("gatewarden/t/alert", "alert-during").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Restore it: the bridge reconnects and forwards the queue into the
    // dashboard's persistent session, which it picks up when it reconnects.
    central = mosquitto(&central_conf, central_port);
    let _second = spawn_sub(o, got.clone()).await;
    eventually("every event queued during the outage arrives", 30, async || {
        let g = got.lock().unwrap();
        ((0..20).all(|i| g.contains(&format!("during-{i}"))) && g.contains(&"alert-during".to_string())).then_some(())
    })
    .await;
    drop(central);
    drop(local);
}

/// The shipped gatewarden.conf itself (paths and ports moved to a scratch
/// folder): the LAN listener speaks only TLS with passwords, the loopback
/// listener serves the daemon, and a wrong password or plain MQTT on the LAN
/// port is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_broker_config_requires_tls_and_passwords_on_the_lan() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sh = |cmd: &str| {
        let o = Command::new("sh").arg("-c").arg(cmd).current_dir(d).output().unwrap();
        assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
    };
    // A throwaway CA and a box certificate for 127.0.0.1.
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=gatewarden-test-ca 2>/dev/null");
    sh("openssl req -newkey rsa:2048 -nodes -keyout box.key -out box.csr -subj /CN=127.0.0.1 2>/dev/null");
    sh("printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext && openssl x509 -req -in box.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out box.crt -days 2 -extfile san.ext 2>/dev/null");
    sh("chmod 0644 box.key ca.crt box.crt");
    let pw = d.join("gatewarden.passwd");
    for (i, u) in ["gatewarden", "blegateway"].iter().enumerate() {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        assert!(cmd.arg("-b").arg(&pw).args([*u, "pw"]).status().unwrap().success());
    }
    std::fs::write(d.join("gatewarden.acl"), deploy("gatewarden.acl")).unwrap();
    let (local, lan) = (free_port(), free_port());
    let conf = deploy("gatewarden.conf")
        .replace("/etc/mosquitto/certs/", &format!("{}/", d.display()))
        .replace("/etc/mosquitto/", &format!("{}/", d.display()))
        .replace("/var/lib/mosquitto/", &format!("{}/", d.display()))
        .replace("listener 1883 127.0.0.1", &format!("listener {local} 127.0.0.1"))
        .replace("listener 8883", &format!("listener {lan} 127.0.0.1"));
    assert!(conf.contains("tls_version") && conf.contains("allow_anonymous false"));
    let conf_path = d.join("gatewarden.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let broker = mosquitto(&conf_path, lan);

    // The daemon's side: loopback, with its password.
    let (_daemon, seen) = client(local, "gatewarden", Some("home/#")).await;
    let publish =
        |args: &[&str]| Command::new("mosquitto_pub").args(["-h", "127.0.0.1", "-q", "1", "-t", "home/gw1/BTtoMQTT/C3A1F0001101"]).args(args).output().unwrap();
    let ca = d.join("ca.crt");
    let port = lan.to_string();
    // A BLE gateway on the LAN: TLS, verified against the CA, with its password.
    let ok = publish(&["-p", &port, "--cafile", ca.to_str().unwrap(), "-u", "blegateway", "-P", "pw", "-m", "over-tls"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // Plain MQTT on the LAN port, and a wrong password over TLS: refused.
    let plain = publish(&["-p", &port, "-u", "blegateway", "-P", "pw", "-m", "plain"]);
    assert!(!plain.status.success(), "plain MQTT was accepted on the TLS listener");
    let wrong = publish(&["-p", &port, "--cafile", ca.to_str().unwrap(), "-u", "blegateway", "-P", "nope", "-m", "wrong-password"]);
    assert!(!wrong.status.success(), "a wrong password was accepted");
    let anon = publish(&["-p", &local.to_string(), "-m", "anonymous"]);
    assert!(!anon.status.success(), "anonymous clients are refused on loopback too");
    eventually("the TLS sighting reaches the daemon", 10, async || seen.lock().unwrap().iter().any(|m| m.ends_with("over-tls")).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.iter().any(|m| m.ends_with("plain") || m.ends_with("wrong-password") || m.ends_with("anonymous")), "{seen:?}");
    drop(broker);
}
