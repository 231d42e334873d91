#!/usr/bin/env bash
# Install (or upgrade) gatewarden on a Debian 12 / Ubuntu gateway box, as root,
# from a built source tree or an unpacked release:
#   cargo build --release --bin gatewarden --bin gatewarden-vision
#   sudo bash deploy/install.sh [--enable] [--with-broker]
# Options:
#   --bin-dir DIR   where gatewarden and gatewarden-vision are (default target/release)
#   --enable        enable and start the service now (needs a finished config)
#   --with-broker   also install mosquitto with deploy/mosquitto's ACL (you add users and TLS certs)
#   --no-apt        skip package installation (offline boxes with packages preinstalled)
# What it does, idempotently (an upgrade keeps /etc/gatewarden and /var/lib/gatewarden;
# the daemon migrates its store at start-up):
#   runtime packages only (OpenCV runtime libraries, CA certificates), a system
#   user `gatewarden` in the gpio and video groups, /etc/gatewarden (root:gatewarden 0750),
#   /var/lib/gatewarden (gatewarden 0750), the binaries in /usr/bin, the models and the
#   ONNX Runtime library in /usr/share/gatewarden/models (every file checked by SHA-256),
#   the hardened systemd unit, a udev rule giving the gpio group the GPIO chips; then it
#   proves the install by loading every model as the service user.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=$SRC/target/release
ENABLE=0 BROKER=0 APT=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    --enable) ENABLE=1; shift ;;
    --with-broker) BROKER=1; shift ;;
    --no-apt) APT=0; shift ;;
    *) echo "unknown option $1 (see the top of $0)" >&2; exit 2 ;;
  esac
done
die() { echo "install: error: $*" >&2; exit 1; }
step() { echo "==> $*"; }
[ "$(id -u)" = 0 ] || die "run as root (sudo bash $0)"
for b in gatewarden gatewarden-vision; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: build with 'cargo build --release --bin gatewarden --bin gatewarden-vision' or pass --bin-dir"
done

MODELS=/usr/share/gatewarden/models
ETC=/etc/gatewarden
STATE=/var/lib/gatewarden

if [ "$APT" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  step "runtime packages"
  apt-get update -q >/dev/null
  # The OpenCV runtime packages carry the soname in their name (406 on Debian 12,
  # 406t64 on Ubuntu 24.04): take what this release offers.
  pkgs=(ca-certificates)
  for m in core imgproc imgcodecs videoio; do
    p=$(apt-cache pkgnames "libopencv-$m" | grep -v -- '-dev$' | sort | tail -1)
    [ -n "$p" ] || die "this release has no libopencv-$m runtime package"
    pkgs+=("$p")
  done
  [ "$BROKER" = 1 ] && pkgs+=(mosquitto mosquitto-clients)
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
  echo "    ${pkgs[*]}"
fi

step "service user and groups"
for g in gpio video; do getent group "$g" >/dev/null || groupadd --system "$g"; done
getent group gatewarden >/dev/null || groupadd --system gatewarden
if ! getent passwd gatewarden >/dev/null; then
  useradd --system --gid gatewarden --groups gpio,video --home-dir "$STATE" --no-create-home \
    --shell /usr/sbin/nologin --comment "gatewarden daemon" gatewarden
else
  usermod --append --groups gpio,video gatewarden
fi

step "files"
install -m 0755 "$BIN_DIR/gatewarden" "$BIN_DIR/gatewarden-vision" /usr/bin/
install -d -o root -g gatewarden -m 0750 "$ETC"
if [ -f "$ETC/gatewarden.toml" ]; then
  echo "    keeping $ETC/gatewarden.toml"
else
  install -o root -g gatewarden -m 0640 "$SRC/config/gatewarden.example.toml" "$ETC/gatewarden.toml"
  echo "    $ETC/gatewarden.toml from the example: set site, mqtt, channels and gates"
fi
install -d -o gatewarden -g gatewarden -m 0750 "$STATE"
install -d -m 0755 /usr/share/doc/gatewarden
install -m 0644 "$SRC/README.md" /usr/share/doc/gatewarden/
install -m 0644 "$SRC/deploy/gatewarden.service" /etc/systemd/system/gatewarden.service
install -d -m 0755 /etc/udev/rules.d
cat > /etc/udev/rules.d/60-gatewarden-gpio.rules <<'RULES'
# gatewarden drives relays through the GPIO character device as the gpio group, not root.
SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"
RULES
if [ "$BROKER" = 1 ]; then
  install -m 0644 "$SRC/deploy/mosquitto/gatewarden.conf" /etc/mosquitto/conf.d/gatewarden.conf
  install -m 0640 -g mosquitto "$SRC/deploy/mosquitto/gatewarden.acl" /etc/mosquitto/gatewarden.acl
  echo "    mosquitto: add users with mosquitto_passwd /etc/mosquitto/gatewarden.passwd and certs in /etc/mosquitto/certs"
fi

step "models and ONNX Runtime (SHA-256 verified)"
install -d -m 0755 "$MODELS"
# Files shipped beside this script are copied, then everything is verified;
# anything missing or wrong is fetched (PyPI, mirror, upstream) and verified.
if [ -d "$SRC/models" ]; then
  (cd "$SRC/models" && find . -type f ! -name '*.part' -print0 | while IFS= read -r -d '' f; do
    install -D -m 0644 "$f" "$MODELS/$f"; done)
fi
if ! GATEWARDEN_MODELS_DIR="$MODELS" bash "$SRC/deploy/fetch-models.sh"; then
  [ "$APT" = 1 ] && ! python3 -m pip --version >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends python3-pip >/dev/null
  GATEWARDEN_MODELS_DIR="$MODELS" bash "$SRC/deploy/fetch-models.sh" || die "models could not be fetched and verified"
fi

step "checks"
/usr/bin/gatewarden config check "$ETC/gatewarden.toml" || echo "    (fix the config before starting the service)"
# Loads every model through OpenCV's and ONNX Runtime's libraries as the service user.
ldd /usr/bin/gatewarden-vision | grep 'not found' && die "gatewarden-vision is missing libraries (above)"
check_cfg=$(mktemp)
printf 'site = "install-check"\n[store]\npath = "%s/db"\n[vision]\nmodels_dir = "%s"\n' "$STATE" "$MODELS" > "$check_cfg"
chmod 0644 "$check_cfg"
setpriv --reuid=gatewarden --regid=gatewarden --init-groups /usr/bin/gatewarden-vision --config "$check_cfg" --check \
  || { rm -f "$check_cfg"; die "the vision check failed (above)"; }
rm -f "$check_cfg"

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemd-analyze verify /etc/systemd/system/gatewarden.service
  if [ "$ENABLE" = 1 ]; then systemctl enable --now gatewarden; systemctl --no-pager status gatewarden | head -5; fi
  udevadm control --reload-rules 2>/dev/null && udevadm trigger --subsystem-match=gpio 2>/dev/null || true
else
  echo "    systemd is not running here (container or chroot): enable later with 'systemctl enable --now gatewarden'"
fi
echo "installed. Next: edit $ETC/gatewarden.toml, 'gatewarden config check $ETC/gatewarden.toml', 'systemctl enable --now gatewarden'."
