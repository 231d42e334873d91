//! What physically opens a gate: an MQTT relay (Shelly/Tasmota style), an HTTP
//! request, a Linux GPIO line, or `log` (a dry run). A failure is returned so
//! the caller can log and alert it; nothing here retries an open, because a
//! late open is worse than none.

use config::ActuatorConfig;
use std::time::Duration;

pub struct Actuator {
    cfg: ActuatorConfig,
    mqtt: Option<rumqttc::AsyncClient>,
    http: reqwest::Client,
}

impl Actuator {
    pub fn new(cfg: ActuatorConfig, mqtt: Option<rumqttc::AsyncClient>) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().expect("reqwest client");
        Self { cfg, mqtt, http }
    }

    /// Pulse the gate open.
    pub async fn open(&self, gate: &str) -> Result<(), ActuatorError> {
        match &self.cfg {
            ActuatorConfig::Log => {
                tracing::info!(gate, "DRY RUN: gate would open (actuator kind = \"log\")");
                Ok(())
            }
            ActuatorConfig::Mqtt { topic, on, off, pulse } => {
                let c = self.mqtt.as_ref().ok_or(ActuatorError::NoMqtt)?;
                c.publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, on.clone()).await.map_err(|e| ActuatorError::Mqtt(e.to_string()))?;
                let (c, topic, off, pulse) = (c.clone(), topic.clone(), off.clone(), pulse.get());
                tokio::spawn(async move {
                    tokio::time::sleep(pulse).await;
                    if let Err(e) = c.publish(topic, rumqttc::QoS::AtLeastOnce, false, off).await {
                        tracing::error!(error = %e, "cannot release the relay");
                    }
                });
                Ok(())
            }
            ActuatorConfig::Http { url, method, body } => {
                let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|_| ActuatorError::Method(method.clone()))?;
                // The URL may carry a device key: never quote it in the error.
                let r = self
                    .http
                    .request(m, url)
                    .body(body.clone().unwrap_or_default())
                    .send()
                    .await
                    .map_err(|e| ActuatorError::Http(e.without_url().to_string()))?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(ActuatorError::Status(r.status().as_u16()))
                }
            }
            ActuatorConfig::Gpio { chip, line, active_low, pulse } => {
                let (path, line, active_low, pulse) = (chip.clone(), *line, *active_low, pulse.get());
                tokio::task::spawn_blocking(move || gpio::pulse(&path, line, active_low, pulse))
                    .await
                    .map_err(|e| ActuatorError::Gpio { chip: chip.clone(), reason: e.to_string() })?
                    .map_err(|e| ActuatorError::Gpio { chip: chip.clone(), reason: e.to_string() })
            }
        }
    }
}

/// Why a gate did not open.
#[derive(Debug, thiserror::Error)]
pub enum ActuatorError {
    #[error("no actuator configured for this gate")]
    NotConfigured,
    #[error("no MQTT connection for the relay")]
    NoMqtt,
    #[error("relay publish failed: {0}")]
    Mqtt(String),
    #[error("invalid HTTP method {0:?}")]
    Method(String),
    #[error("HTTP actuator: {0}")]
    Http(String),
    #[error("HTTP actuator answered {0}")]
    Status(u16),
    #[error("GPIO {}: {reason}", chip.display())]
    Gpio { chip: std::path::PathBuf, reason: String },
}

/// The GPIO character device (uAPI v1 line handles). Access comes from the
/// `gpio` group owning /dev/gpiochipN, not from running as root.
mod gpio {
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[repr(C)]
    struct HandleRequest {
        lineoffsets: [u32; 64],
        flags: u32,
        default_values: [u8; 64],
        consumer_label: [u8; 32],
        lines: u32,
        fd: i32,
    }
    #[repr(C)]
    struct HandleData {
        values: [u8; 64],
    }
    const fn iowr(nr: u64, size: usize) -> u64 {
        (3 << 30) | ((size as u64) << 16) | (0xB4 << 8) | nr
    }
    const GET_LINEHANDLE: u64 = iowr(0x03, std::mem::size_of::<HandleRequest>());
    const SET_LINE_VALUES: u64 = iowr(0x09, std::mem::size_of::<HandleData>());
    const REQUEST_OUTPUT: u32 = 1 << 1;
    const REQUEST_ACTIVE_LOW: u32 = 1 << 2;

    pub fn pulse(chip: &std::path::Path, line: u32, active_low: bool, pulse: Duration) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(chip)?;
        let mut req = HandleRequest {
            lineoffsets: [0; 64],
            flags: REQUEST_OUTPUT | if active_low { REQUEST_ACTIVE_LOW } else { 0 },
            default_values: [0; 64],
            consumer_label: [0; 32],
            lines: 1,
            fd: -1,
        };
        req.lineoffsets[0] = line;
        req.consumer_label[..10].copy_from_slice(b"gatewarden");
        // SAFETY: a correctly sized, initialised request for this ioctl.
        if unsafe { libc::ioctl(f.as_raw_fd(), GET_LINEHANDLE as _, &mut req) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let set = |v: u8| {
            let mut d = HandleData { values: [0; 64] };
            d.values[0] = v;
            // SAFETY: `req.fd` is the line handle the kernel just gave us.
            if unsafe { libc::ioctl(req.fd, SET_LINE_VALUES as _, &mut d) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        let r = set(1).and_then(|_| {
            std::thread::sleep(pulse);
            set(0)
        });
        // SAFETY: closing the handle fd we own.
        unsafe { libc::close(req.fd) };
        r
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn ioctl_numbers_match_the_kernel_uapi() {
            // From linux/gpio.h: GPIO_GET_LINEHANDLE_IOCTL = _IOWR(0xB4, 0x03, struct gpiohandle_request)
            // with sizeof = 364, and GPIOHANDLE_SET_LINE_VALUES_IOCTL = _IOWR(0xB4, 0x09, 64 bytes).
            assert_eq!(super::GET_LINEHANDLE, 0xC16C_B403);
            assert_eq!(super::SET_LINE_VALUES, 0xC040_B409);
        }

        #[test]
        fn a_missing_chip_is_a_clear_error() {
            let e = super::pulse(std::path::Path::new("/dev/gpiochip-none"), 3, false, std::time::Duration::ZERO).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        }
    }
}
