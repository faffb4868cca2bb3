#!/usr/bin/env bash
# Installs the Debian packages the build needs (when root), then the virtual environment.
# Re-running it is cheap: each step checks first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

need=()
"$PY" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
"$PY" -c 'import sysconfig,os,sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")) else 1)' || need+=(python3-dev)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/include/openssl/evp.h ] || need+=(libssl-dev)
[ -f /usr/include/secp256k1.h ] || need+=(libsecp256k1-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "bootstrap: missing Debian packages: ${need[*]}" >&2
    echo "bootstrap: run as root: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi

# fastecdsa (a py-libp2p dependency) builds from source where pip finds no wheel for this Python
# (Debian 12's own python3.11 in a bare debootstrap: deploy/systemd_check.sh) and then needs GMP's
# headers. Installed when we can; without them pip still takes a wheel where there is one
if ! [ -f /usr/include/gmp.h ] && ! [ -f "/usr/include/$(uname -m)-linux-gnu/gmp.h" ] &&
   [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: installing libgmp-dev (fastecdsa's build, where no wheel fits)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgmp-dev >/dev/null; } ||
    echo "bootstrap: could not install libgmp-dev; fastecdsa must then come as a wheel" >&2
fi

# optional, for tests only: iproute2 lets tests/test_netns.py build its network namespaces (as root);
# without it that test is skipped, so it is installed when we can and never required
if ! command -v ip >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: installing iproute2 (optional: the network-namespace test)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; } ||
    echo "bootstrap: could not install iproute2; tests/test_netns.py will be skipped" >&2
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade "pip>=23,<27" "setuptools>=68,<81" "wheel<1" "Cython>=3.0,<4"
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
