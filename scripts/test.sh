#!/usr/bin/env bash
# Runs every test of changeflow, installing what the tests need first:
# PostgreSQL (the oracle for SQL semantics) from Debian's packages when initdb is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "PostgreSQL server binaries are missing: installing postgresql from apt" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
ls /usr/lib/postgresql/*/bin/initdb >/dev/null || { echo "initdb still missing after install" >&2; exit 1; }

# The TLS tests make their certificates with the openssl command.
if ! command -v openssl >/dev/null; then
    echo "openssl is missing: installing it from apt" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl >/dev/null
fi

cargo test --workspace "$@"
