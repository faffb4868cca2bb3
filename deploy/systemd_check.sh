#!/usr/bin/env bash
# The operator's path of README "Running a validator", one operator and one validator, on a bare
# Debian 12 under systemd as PID 1: a debootstrap root booted with systemd-nspawn. It checks what
# only a real systemd shows: `make setup` from nothing, `operator init` as the service user, the
# hardened unit starting (Type=notify: READY=1), `systemctl stop` draining with exit 0, a SIGKILL
# restarted by Restart=on-failure, a restart keeping the chain, every commit proven on the way,
# and `medchain verify` of the ledger at the end. Needs root and Debian's package mirror; takes a
# few minutes the first time (the root is kept and reused). Not part of `make test`.
#
#   sudo deploy/systemd_check.sh [ROOT_DIR]      (default /var/lib/machines/medchain-check)
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${1:-/var/lib/machines/medchain-check}
[ "$(id -u)" = 0 ] || { echo "systemd_check: run as root" >&2; exit 1; }

command -v systemd-nspawn >/dev/null && command -v debootstrap >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container debootstrap >/dev/null
if [ ! -x "$ROOT/usr/bin/python3" ]; then
  echo "systemd_check: debootstrap into $ROOT"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,python3,ca-certificates,curl,git,make \
    bookworm "$ROOT" http://deb.debian.org/debian >/dev/null
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"  # a TLS-inspecting proxy's CA too
rm -rf "$ROOT/opt/medchain"
git clone -q "$SRC" "$ROOT/opt/medchain"

# no machined or system bus needed on the host: --keep-unit --register=no
NSPAWN=(systemd-nspawn -q --keep-unit --register=no -D "$ROOT" --setenv=PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
echo "systemd_check: make setup in the bare root (its own python3.11, packages by bootstrap.sh)"
"${NSPAWN[@]}" --pipe bash -c 'cd /opt/medchain && make setup' >"$ROOT/root/setup.log" 2>&1 ||
  { tail -30 "$ROOT/root/setup.log"; exit 1; }

cat >"$ROOT/root/walkthrough.sh" <<'INNER'
#!/bin/bash
set -euo pipefail
cd /opt/medchain
systemctl disable --now medchain >/dev/null 2>&1 || true  # a root reused: last run's unit started at boot
id medchain >/dev/null 2>&1 || useradd --system --home-dir /var/lib/medchain --shell /usr/sbin/nologin medchain
rm -rf /var/lib/medchain && install -d -o medchain -g medchain -m 0700 /var/lib/medchain
runuser -u medchain -- .venv/bin/medchain operator init --home /var/lib/medchain --api 127.0.0.1:8545 \
  --p2p 127.0.0.1:9545 --name hospital-a
cd /root && rm -f genesis.json
/opt/medchain/.venv/bin/medchain genesis new --out genesis.json --chain-id medchain-systemd-check
/opt/medchain/.venv/bin/medchain genesis add-validator genesis.json /var/lib/medchain/validator.json
HASH=$(/opt/medchain/.venv/bin/medchain genesis finalize genesis.json | grep -oE '[0-9a-f]{64}' | head -1)
install -m 0644 genesis.json /tmp/genesis.json
runuser -u medchain -- /opt/medchain/.venv/bin/medchain operator install-genesis --home /var/lib/medchain \
  /tmp/genesis.json --expect-hash "$HASH"
cd /opt/medchain
install -d /etc/medchain && install -m 0644 deploy/node.toml /etc/medchain/node.toml
install -m 0644 deploy/medchain.service /etc/systemd/system/ && systemctl daemon-reload
systemctl enable --now medchain   # returns once the validator sent READY=1

ready() { for _ in $(seq 1 120); do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8545/readyz)" = 200 ] && return 0; sleep 0.5; done; return 1; }
height() { curl -s http://127.0.0.1:8545/v1/status | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["height"])'; }
load() {  # 20 writes of staff profiles, each acknowledged by POST /v1/tx?wait and its proofs checked
  .venv/bin/python - "$1" <<'PY'
import asyncio, sys
from devices.patient.client import NodeClient
from node.crypto.keys import Identity
from node.genesis import Genesis
from node.proof import verify_status
from node.tx import Profile, Tx
g = Genesis.load("/tmp/genesis.json")
async def go() -> None:
    async with NodeClient("http://127.0.0.1:8545") as c:
        for i in range(20):
            ident = Identity.from_seed(f"{sys.argv[1]}-{i}".encode())
            tx = Tx.build(ident, g.chain_id, 1, Profile("N", "nurse", "Ward", ident.box_public))
            verify_status(tx.id, await c.submit_and_wait(tx.raw, None, 10), g.validator_keys, g.chain_id)
asyncio.run(go())
PY
}
check() { [ "$(systemctl show medchain -p "$1" --value)" = "$2" ] || { echo "FAIL: $1 is not $2"; systemctl status medchain --no-pager; exit 1; }; }

ready; check ActiveState active; check Type notify
load a; [ "$(height)" -ge 20 ]
systemctl stop medchain                       # SIGTERM: a drain
check ActiveState inactive; check Result success; check ExecMainStatus 0
systemctl start medchain; ready; [ "$(height)" -ge 20 ]; load b
kill -9 "$(systemctl show medchain -p MainPID --value)"
sleep 1; check SubState auto-restart          # Restart=on-failure, RestartSec=5
for _ in $(seq 1 40); do [ "$(systemctl show medchain -p SubState --value)" = running ] && break; sleep 0.5; done
ready; check NRestarts 1; [ "$(height)" -ge 40 ]; load c
systemctl restart medchain; ready; load d; [ "$(height)" -ge 80 ]
systemctl stop medchain; check ExecMainStatus 0
runuser -u medchain -- .venv/bin/medchain verify --home /var/lib/medchain
journalctl -u medchain --no-pager -o cat | grep -c "stopped cleanly" | xargs echo "clean stops in the journal:"
echo "SYSTEMD CHECK PASSED"
INNER
chmod +x "$ROOT/root/walkthrough.sh"

echo "systemd_check: booting the root with systemd as PID 1"
"${NSPAWN[@]}" -b >"$ROOT/root/boot.log" 2>&1 &
NSPAWN_PID=$!
trap 'kill "$NSPAWN_PID" 2>/dev/null || true' EXIT
init_pid() {  # the container's PID 1 seen from here: the systemd that descends from our nspawn
  for p in $(pgrep -x systemd); do
    q=$p
    while [ "$q" -gt 1 ]; do
      [ "$q" = "$NSPAWN_PID" ] && { echo "$p"; return; }
      q=$(awk '{print $4}' "/proc/$q/stat" 2>/dev/null || echo 1)
    done
  done
}
INIT=""
for _ in $(seq 1 90); do
  INIT=$(init_pid || true)
  if [ -n "$INIT" ]; then
    state=$(nsenter -t "$INIT" -a systemctl is-system-running --wait 2>/dev/null || true)
    case "$state" in running|degraded) break ;; esac
  fi
  sleep 1
done
[ -n "$INIT" ] || { echo "systemd_check: the container did not boot" >&2; tail -20 "$ROOT/root/boot.log"; exit 1; }
status=0
nsenter -t "$INIT" -a /root/walkthrough.sh || status=$?
nsenter -t "$INIT" -a systemctl poweroff >/dev/null 2>&1 || true
wait "$NSPAWN_PID" 2>/dev/null || true
trap - EXIT
exit $status
