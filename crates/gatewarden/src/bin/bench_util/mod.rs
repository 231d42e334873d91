//! What the bench binaries share: ports, arguments, child processes that die
//! with the bench, and a process's CPU time and memory from /proc.

use std::process::{Child, Command, Stdio};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The value after `--name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

/// A child process killed (and reaped) when the bench lets go of it.
pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// User and system CPU time of a process so far, in microseconds.
pub fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // Skip the state letter; the rest are numbers, some negative (tpgid is -1 without a terminal).
    let f: Vec<i64> = rest.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    let ticks = (f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)).max(0) as u64;
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    ticks * 10_000
}

/// A `kB` field of /proc/<pid>/status (`VmRSS:`, `VmHWM:`).
pub fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A mosquitto on a free loopback port, configured in `dir` (`extra`: more
/// config lines), once it accepts connections; killed with the handle.
pub fn mosquitto(dir: &std::path::Path, extra: &str) -> anyhow::Result<(u16, Kill)> {
    let port = free_port();
    let conf = dir.join("m.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}"))?;
    let broker = Kill(Command::new("mosquitto").arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((port, broker));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    anyhow::bail!("mosquitto did not start on port {port}")
}
