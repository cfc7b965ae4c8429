#!/usr/bin/env bash
# test-config.sh BUILD_DIR - a service started with a bad variable must stop at once with exit
# status 2 and one line on stderr that names the variable (ARCHITECTURE §6), and must never
# echo a secret-looking value. Runs against every built service binary.
set -uo pipefail
B=${1:-build}
pass=0 fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check() { # binary, expected word in the message, VAR=value...
    local bin=$1 want=$2; shift 2
    local out rc
    out=$(env -i PATH="$PATH" DATA_DIR="$tmp/data" PORT=0 "$@" timeout 10 "$bin" 2>&1 >/dev/null)
    rc=$?
    if [ $rc -eq 2 ] && [ "$(printf '%s\n' "$out" | grep -c .)" -eq 1 ] && printf '%s' "$out" | grep -q "$want"; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "FAIL $(basename "$bin") $*: rc=$rc, expected 2 and one line naming $want; got: $out"
    fi
}

for bin in "$B"/bin/[0-9][0-9]-*; do
    [ -x "$bin" ] || continue
    check "$bin" DATABASE_URL DATABASE_URL=mysql://u:p@h/db
    check "$bin" DATABASE_URL DATABASE_URL=sqlite://
    check "$bin" DATABASE_URL DATABASE_URL=postgres://u@h:notaport/db
    check "$bin" DATABASE_URL DATABASE_URL=nonsense
    check "$bin" JWKS_URL JWKS_URL=ftp://example/jwks.json
    check "$bin" JWKS_URL JWKS_URL=not-a-url
    check "$bin" JWKS_URL 'JWKS_URL=http://exa mple/jwks'
    check "$bin" TRUSTED_PROXIES 'TRUSTED_PROXIES=10.0.0.1,gateway'
    check "$bin" TRUSTED_PROXIES 'TRUSTED_PROXIES=10.0.0.1,,10.0.0.2'
    check "$bin" PORT PORT=http
    check "$bin" PORT PORT=70000
    check "$bin" LOG_LEVEL LOG_LEVEL=loud
    check "$bin" HTTP_MAX_BODY HTTP_MAX_BODY=-1
    check "$bin" HTTP_THREADS HTTP_THREADS=0
    check "$bin" EVENT_BUS EVENT_BUS=kafka
    # The password in a bad URL must not be printed back.
    out=$(env -i PATH="$PATH" DATA_DIR="$tmp/data" DATABASE_URL='mysql://user:s3cr3tpw@h/db' "$bin" 2>&1)
    if printf '%s' "$out" | grep -q s3cr3tpw; then
        fail=$((fail + 1)); echo "FAIL $(basename "$bin"): the DATABASE_URL password was echoed: $out"
    else
        pass=$((pass + 1))
    fi
done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
