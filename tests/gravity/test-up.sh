#!/bin/bash
# test-up.sh - black-box tests of the gravity command (up, status, logs, run) against fake
# services (tests/gravity/fake-service.sh installed as NN-name in a temporary bin directory),
# then `gravity up` with the real auth (05), event bus (14) and product (17) services, with no
# SERVICE_TOKEN anywhere: every service must get its service token from auth by itself.
#
#   tests/gravity/test-up.sh               uses build/bin/gravity
#   tests/gravity/test-up.sh BUILD_DIR     uses BUILD_DIR/bin/gravity (scripts/run-suite.sh)
#   GRAVITY=/path/to/gravity tests/gravity/test-up.sh
#
# Every wait polls a condition against a deadline. Every process started here is stopped by
# PID at exit. Ends with "N passed, N failed"; exits 1 when anything failed.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
if [ -z "${GRAVITY:-}" ]; then
    GRAVITY=${1:-$ROOT/build}/bin/gravity
fi
if [ ! -x "$GRAVITY" ]; then
    echo "test-up: no gravity binary at '$GRAVITY'" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
PY=/usr/bin/python3
PASS=0
FAIL=0
PIDS=()

T=$(mktemp -d /tmp/gravity-test.XXXXXX)
BIN=$T/bin
export GRAVITY_BIN_DIR=$BIN
export GRAVITY_DATA=$T/data
STATE=$GRAVITY_DATA/gravity.state

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        [ "${p:-0}" -gt 0 ] 2>/dev/null && kill -9 "$p" 2>/dev/null # never 0: the process group
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null
    done
    rm -rf "$T"
}
trap cleanup EXIT

ok() {
    PASS=$((PASS + 1))
    echo "ok   - $1"
}
fail() {
    FAIL=$((FAIL + 1))
    echo "FAIL - $1"
}
check() { # check "description" command...
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}

# wait_until SECONDS command...: polls the command every 50 ms until it succeeds.
wait_until() {
    local secs=$1
    shift
    local end=$((SECONDS + secs + 1))
    while ((SECONDS < end)); do
        if "$@"; then return 0; fi
        sleep 0.05
    done
    return 1
}

# A JSON value from the state file: state_get 'services[0]["pid"]'.
state_get() {
    $PY -c 'import json,sys; s=json.load(open(sys.argv[1])); print(eval("s"+sys.argv[2]))' \
        "$STATE" "$1" 2>/dev/null
}
svc_pid() { # svc_pid ID
    $PY -c 'import json,sys
s=json.load(open(sys.argv[1]))
print(next(v["pid"] for v in s["services"] if v["id"]==sys.argv[2]))' "$STATE" "$1" 2>/dev/null
}
svc_field() { # svc_field ID FIELD
    $PY -c 'import json,sys
s=json.load(open(sys.argv[1]))
print(next(v[sys.argv[3]] for v in s["services"] if v["id"]==sys.argv[2]))' "$STATE" "$1" "$2" 2>/dev/null
}
http_code() {
    curl -s -o /dev/null -w '%{http_code}' --noproxy '*' -m 2 "$1"
}
is_ready() { [ "$(http_code "http://127.0.0.1:$1/ready")" = 200 ]; }
alive() { kill -0 "$1" 2>/dev/null; }
dead() { ! kill -0 "$1" 2>/dev/null; }
# Whether PID is a zombie or gone (a zombie's parent has not reaped it yet).
gone() { ! alive "$1" || grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
new_pid() { # new_pid ID OLD: the state shows a running pid other than OLD
    local p
    p=$(svc_pid "$1")
    [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$2" ]
}
restarts_at_least() { # restarts_at_least ID N
    local r
    r=$(svc_field "$1" restarts)
    [ -n "$r" ] && [ "$r" -ge "$2" ]
}
file_has() { grep -q -- "$2" "$1" 2>/dev/null; }
no_file() { [ ! -e "$1" ]; }

# free_offset N...: an offset such that 8000 + N + offset is free for each N.
free_offset() {
    $PY - "$@" <<'PY'
import random, socket, sys
for _ in range(200):
    base = random.randint(12000, 31000)  # below the kernel's ephemeral range (32768-)
    socks = []
    try:
        for n in sys.argv[1:]:
            s = socket.socket()
            s.bind(("127.0.0.1", base + int(n)))
            socks.append(s)
        print(base - 8000)
        break
    except OSError:
        pass
    finally:
        for s in socks:
            s.close()
PY
}

# Free ports: an offset such that 8097..8099 + offset are all free.
OFFSET=$(free_offset 97 98 99)
export GRAVITY_PORT_OFFSET=$OFFSET
PA=$((8098 + OFFSET))
PB=$((8099 + OFFSET))

mkdir -p "$BIN"
ln -s "$HERE/fake-service.sh" "$BIN/98-fake-alpha"
ln -s "$HERE/fake-service.sh" "$BIN/99-fake-beta"
printf '#!/bin/sh\nexit 0\n' >"$BIN/50-not-executable"
cp "$GRAVITY" "$BIN/gravity" # gravity must ignore itself and non-executables
echo "# gravity: $GRAVITY, data: $T, ports $PA $PB"

# ---- help, usage, not running --------------------------------------------------------------
"$GRAVITY" help >"$T/help.out"
check "help exits 0 and prints usage" file_has "$T/help.out" "usage: gravity"
"$GRAVITY" >/dev/null
check "no arguments prints usage (exit 0)" test $? -eq 0
"$GRAVITY" frobnicate >/dev/null 2>&1
check "unknown command exits 2" test $? -eq 2
"$GRAVITY" status >"$T/status0.out" 2>&1
rc=$?
check "status without gravity up exits 1" test $rc -eq 1
check "status without gravity up says so in one line" \
    test "$(wc -l <"$T/status0.out")" -eq 1 -a -n "$(grep 'not running' "$T/status0.out")"

# ---- up ------------------------------------------------------------------------------------
"$GRAVITY" up >"$T/up.out" 2>"$T/up.err" &
G=$!
PIDS+=("$G")
check "up prints the table" wait_until 30 file_has "$T/up.out" "99-fake-beta"
check "table has a header" file_has "$T/up.out" "SERVICE.*PORT.*PID.*STATUS.*URL"
check "table shows alpha ready with its URL" \
    file_has "$T/up.out" "98-fake-alpha *$PA .*ready *http://127.0.0.1:$PA"
check "table does not list gravity or non-executables" \
    test -z "$(grep -e gravity -e not-executable "$T/up.out")"
check "alpha answers /ready" is_ready "$PA"
check "beta answers /ready" is_ready "$PB"
check "state file exists" test -s "$STATE"
check "state has gravity's pid" test "$(state_get '["pid"]')" = "$G"
A1=$(svc_pid 98-fake-alpha)
B1=$(svc_pid 99-fake-beta)
PIDS+=("$A1" "$B1")
check "alpha runs as its own process" alive "$A1"
check "alpha got DATA_DIR=<data>/<id>" \
    wait_until 5 file_has "$GRAVITY_DATA/logs/98-fake-alpha.log" "data_dir=$GRAVITY_DATA/98-fake-alpha"
check "alpha's data dir was created" test -d "$GRAVITY_DATA/98-fake-alpha"

"$GRAVITY" up >/dev/null 2>"$T/up2.err"
check "a second up refuses to start (exit 1)" test $? -eq 1
check "a second up says gravity is already running" file_has "$T/up2.err" "already running"

# ---- status --------------------------------------------------------------------------------
"$GRAVITY" status >"$T/status.out" 2>&1
check "status exits 0 while up" test $? -eq 0
check "status shows alpha up with version, pid and port" \
    file_has "$T/status.out" "98-fake-alpha *up *0.1.0 *$A1 *$PA "
check "status shows beta up" file_has "$T/status.out" "99-fake-beta *up "

# ---- restart after a crash -----------------------------------------------------------------
kill -9 "$A1"
check "kill -9 of alpha: gravity starts a new alpha" wait_until 10 new_pid 98-fake-alpha "$A1"
A2=$(svc_pid 98-fake-alpha)
PIDS+=("$A2")
check "the new alpha answers /ready" wait_until 10 is_ready "$PA"
check "state counts one restart" test "$(svc_field 98-fake-alpha restarts)" = 1
check "beta was not touched" test "$(svc_pid 99-fake-beta)" = "$B1"
check "the crash was logged to stderr" file_has "$T/up.err" "service exited.*98-fake-alpha"
"$GRAVITY" status >"$T/status2.out" 2>&1
check "status shows alpha's new pid and 1 restart" \
    file_has "$T/status2.out" "98-fake-alpha *up *0.1.0 *$A2 *$PA .* 1$"

# ---- logs ----------------------------------------------------------------------------------
"$GRAVITY" logs 98-fake-alpha --no-follow >"$T/logs.out" 2>&1
check "logs by id shows the child's output" file_has "$T/logs.out" "fake-alpha listening on port $PA"
"$GRAVITY" logs 98 -n 1 --no-follow >"$T/logs1.out" 2>&1
check "logs by number with -n 1 prints one line" test "$(wc -l <"$T/logs1.out")" -eq 1
"$GRAVITY" logs fake-beta --no-follow >"$T/logsb.out" 2>&1
check "logs by name works" file_has "$T/logsb.out" "fake-beta listening"
"$GRAVITY" logs nope --no-follow >/dev/null 2>&1
check "logs of an unknown service exits 1" test $? -eq 1
"$GRAVITY" logs 99-fake-beta -n 0 >"$T/follow.out" 2>&1 &
L=$!
PIDS+=("$L")
# Lines written before `logs` reached the end of the file are not shown (-n 0), so keep
# making new ones until one arrives.
poke_and_look() {
    curl -s -o /dev/null --noproxy '*' "http://127.0.0.1:$PB/health?followed"
    file_has "$T/follow.out" "health?followed"
}
check "logs follows new lines" wait_until 5 poke_and_look
kill -INT "$L"
wait "$L"
check "logs exits 0 on Ctrl-C" test $? -eq 0

# ---- SIGTERM drains everything -------------------------------------------------------------
B1=$(svc_pid 99-fake-beta)
kill -TERM "$G"
check "gravity exits after SIGTERM within 12 s" wait_until 12 gone "$G"
wait "$G"
check "gravity exits 0" test $? -eq 0
check "alpha exited" dead "$A2"
check "beta exited" dead "$B1"
check "state file removed on exit" no_file "$STATE"
check "alpha drained on SIGTERM" file_has "$GRAVITY_DATA/logs/98-fake-alpha.log" "got SIGTERM"
check "up logged each stop" file_has "$T/up.err" "service stopped.*99-fake-beta.*exit 0"
"$GRAVITY" status >/dev/null 2>&1
check "status after exit exits 1" test $? -eq 1

# ---- up --only, backoff doubling -----------------------------------------------------------
ln -s "$HERE/fake-service.sh" "$BIN/97-fake-crashy"
GRAVITY_READY_TIMEOUT=2 "$GRAVITY" up --only 97,fake-beta >"$T/only.out" 2>"$T/only.err" &
G=$!
PIDS+=("$G")
check "up --only starts the subset" wait_until 10 file_has "$T/only.out" "99-fake-beta"
check "up --only leaves the others out" test -z "$(grep 98-fake-alpha "$T/only.out")"
check "state lists just the subset" test "$(state_get '["services"].__len__()')" = 2
check "a crashing service is restarted again and again" wait_until 10 restarts_at_least 97-fake-crashy 2
check "restart backoff doubles (0.5 s, 1.0 s, ...)" \
    wait_until 10 file_has "$T/only.err" "97-fake-crashy' in='1.0s'"
check "first backoff was 0.5 s" file_has "$T/only.err" "97-fake-crashy' in='0.5s'"
BO=$(svc_pid 99-fake-beta)
PIDS+=("$BO")
kill -INT "$G"
check "gravity exits after SIGINT" wait_until 12 gone "$G"
wait "$G"
check "gravity exits 0 after SIGINT" test $? -eq 0
check "beta exited after SIGINT" dead "$BO"
"$GRAVITY" up --only nosuch >/dev/null 2>&1
check "up --only with an unknown service exits 2" test $? -eq 2
rm -f "$BIN/97-fake-crashy"

# ---- SIGKILL of gravity: children still stop ----------------------------------------------
"$GRAVITY" up >"$T/orphan.out" 2>/dev/null &
G=$!
PIDS+=("$G")
check "up starts again" wait_until 10 file_has "$T/orphan.out" "99-fake-beta"
A=$(svc_pid 98-fake-alpha)
PIDS+=("$A")
kill -9 "$G"
{ wait "$G"; } 2>/dev/null
check "children of a SIGKILLed gravity get SIGTERM and exit" wait_until 5 gone "$A"
"$GRAVITY" status >"$T/stale.out" 2>&1
check "status with a stale state file exits 1" test $? -eq 1
check "status names the stale state" file_has "$T/stale.out" "not running (stale"


# ---- a child that ignores SIGTERM is killed after 10 s (up over the stale state file) ------
ln -s "$HERE/fake-service.sh" "$BIN/97-fake-stubborn"
"$GRAVITY" up --only 97,99 >"$T/stub.out" 2>"$T/stub.err" &
G=$!
PIDS+=("$G")
check "up with a stubborn service prints the table" wait_until 10 file_has "$T/stub.out" "99-fake-beta"
S=$(svc_pid 97-fake-stubborn)
BS=$(svc_pid 99-fake-beta)
PIDS+=("$S" "$BS")
kill -TERM "$G"
check "beta stops at once" wait_until 5 dead "$BS"
check "the stubborn one is still alive during the drain" alive "$S"
check "gravity gives up waiting after 10 s and exits" wait_until 14 gone "$G"
wait "$G"
check "gravity exits 0 after killing a stubborn child" test $? -eq 0
check "the stubborn child was killed" dead "$S"
check "the kill was logged" file_has "$T/stub.err" "did not stop in time.*97-fake-stubborn"
rm -f "$BIN/97-fake-stubborn"

# ---- run -----------------------------------------------------------------------------------
"$GRAVITY" run fake-alpha >"$T/run.out" 2>&1 &
R=$!
PIDS+=("$R")
check "run starts the service in the foreground" wait_until 10 is_ready "$PA"
check "run uses the env defaults (PORT, DATA_DIR)" \
    file_has "$T/run.out" "listening on port $PA data_dir=$GRAVITY_DATA/98-fake-alpha"
check "run execs the service (gravity's pid is now the service)" \
    grep -q python3 "/proc/$R/cmdline"
kill -TERM "$R"
wait "$R"
check "the service run by gravity run exits 0 on SIGTERM" test $? -eq 0

# ---- up with the real services: service tokens from auth, no SERVICE_TOKEN ---------------
# gravity gives every service SERVICE_CLIENT_ID/SERVICE_CLIENT_SECRET (and the auth service
# the same pair as its bootstrap client); gr trades them for a token at AUTH_URL, which the
# event bus accepts. Proof: product-service consumes from and publishes to the bus. With the
# config service (04) in the set, every other service gets CONFIG_URL and watches it.
SB=$(cd "$(dirname "$GRAVITY")" && pwd)
REAL=(04-config-service 05-auth-service 14-event-bus-service 17-product-service)
if [ -x "$SB/04-config-service" ] && [ -x "$SB/05-auth-service" ] && [ -x "$SB/14-event-bus-service" ] && [ -x "$SB/17-product-service" ]; then
    RBIN=$T/rbin
    RDATA=$T/rdata
    STATE=$RDATA/gravity.state
    mkdir -p "$RBIN"
    for s in "${REAL[@]}"; do ln -s "$SB/$s" "$RBIN/$s"; done
    ROFF=$(free_offset 1 7 19 762)
    RC=$((8762 + ROFF))
    RA=$((8001 + ROFF))
    RB=$((8019 + ROFF))
    RP=$((8007 + ROFF))
    ADMIN=root@example.com
    ADMIN_PW=root-password-1
    env -u SERVICE_TOKEN -u SERVICE_CLIENT_ID -u SERVICE_CLIENT_SECRET -u AUTH_URL -u JWKS_URL \
        -u EVENT_BUS_URL -u EVENT_BUS -u DATABASE_URL -u AUTH_BOOTSTRAP_CLIENT_ID \
        -u AUTH_BOOTSTRAP_CLIENT_SECRET -u CONFIG_URL -u CONFIG_MASTER_KEY GRAVITY_BIN_DIR="$RBIN" GRAVITY_DATA="$RDATA" \
        GRAVITY_PORT_OFFSET="$ROFF" AUTH_BOOTSTRAP_ADMIN_EMAIL=$ADMIN \
        AUTH_BOOTSTRAP_ADMIN_PASSWORD=$ADMIN_PW "$GRAVITY" up >"$T/real.out" 2>"$T/real.err" &
    G=$!
    PIDS+=("$G")
    check "up starts auth, the event bus and product-service" \
        wait_until 60 file_has "$T/real.out" "17-product-service"
    # The table is printed at the ready deadline too: under TSan on a busy box a service may
    # still be starting (or restarting) then, so the checks below wait for all four to be up.
    real_up() { for s in "${REAL[@]}"; do [ "$(svc_field "$s" state)" = up ] || return 1; done; }
    check "all four services are up" wait_until 120 real_up
    if ! real_up; then
        for s in "${REAL[@]}"; do
            echo "# $s: state $(svc_field "$s" state), restarts $(svc_field "$s" restarts)"
            tail -n 5 "$RDATA/logs/$s.log" 2>/dev/null | sed 's/^/#   /'
        done
    fi
    for s in "${REAL[@]}"; do PIDS+=("$(svc_pid "$s")"); done
    # proc_env PID NAME: NAME's value in the environment gravity gave the process.
    proc_env() { tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | sed -n "s/^$2=//p"; }
    PP=$(svc_pid 17-product-service)
    PAU=$(svc_pid 05-auth-service)
    SECRET=$(proc_env "$PP" SERVICE_CLIENT_SECRET)
    check "product-service got SERVICE_CLIENT_ID=gravity-platform" \
        test "$(proc_env "$PP" SERVICE_CLIENT_ID)" = gravity-platform
    check "the service secret is at least 32 bytes" test "${#SECRET}" -ge 32
    check "product-service got AUTH_URL with the port offset" \
        test "$(proc_env "$PP" AUTH_URL)" = "http://127.0.0.1:$RA"
    check "product-service has no SERVICE_TOKEN" test -z "$(proc_env "$PP" SERVICE_TOKEN)"
    check "product-service got CONFIG_URL pointing at the config service" \
        test "$(proc_env "$PP" CONFIG_URL)" = "http://127.0.0.1:$RC"
    check "auth got CONFIG_URL too" test "$(proc_env "$PAU" CONFIG_URL)" = "http://127.0.0.1:$RC"
    check "the config service does not watch itself" \
        test -z "$(proc_env "$(svc_pid 04-config-service)" CONFIG_URL)"
    check "product-service started its config watch" \
        wait_until 10 file_has "$RDATA/logs/17-product-service.log" "config watch started"
    # watching PORT N: at least N requests in flight at PORT besides this one (parked polls).
    watching() {
        curl -s --noproxy '*' -m 2 "http://127.0.0.1:$1/metrics" |
            awk -v n="$2" '$1 == "http_requests_in_flight" { ok = ($2 - 1 >= n) } END { exit !ok }'
    }
    check "05, 14 and 17 long-poll the config service at once (parked, no thread each)" \
        wait_until 60 watching "$RC" 3
    check "auth got the same pair as its bootstrap client" \
        test "$(proc_env "$PAU" AUTH_BOOTSTRAP_CLIENT_ID)" = gravity-platform \
        -a "$(proc_env "$PAU" AUTH_BOOTSTRAP_CLIENT_SECRET)" = "$SECRET"
    # bus_is PORT FIELD VALUE: /health/detailed's checks.bus.FIELD is VALUE.
    bus_is() {
        curl -s --noproxy '*' -m 2 "http://127.0.0.1:$1/health/detailed" |
            $PY -c 'import json,sys; sys.exit(str(json.load(sys.stdin)["checks"]["bus"][sys.argv[1]]) != sys.argv[2])' "$2" "$3" 2>/dev/null
    }
    check "product-service consumes from the bus with its service token" \
        wait_until 30 bus_is "$RP" consumer ok
    TOKEN=$(curl -s --noproxy '*' -m 5 -H 'Content-Type: application/json' \
        -d "{\"email\":\"$ADMIN\",\"password\":\"$ADMIN_PW\"}" "http://127.0.0.1:$RA/api/v1/auth/login" |
        $PY -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' 2>/dev/null)
    check "the bootstrap admin logs in" test -n "$TOKEN"
    PID_JSON=$(curl -s --noproxy '*' -m 5 -H "Authorization: Bearer $TOKEN" \
        -H 'Content-Type: application/json' -d '{"title":"Shoe","slug":"gravity-up-shoe"}' \
        "http://127.0.0.1:$RP/api/v1/products")
    PROD=$(printf '%s' "$PID_JSON" | $PY -c 'import json,sys; print(json.load(sys.stdin)["id"])' 2>/dev/null)
    check "a product is created" test -n "$PROD"
    check "its product.created event is published (relay ok, outbox empty)" \
        wait_until 30 bus_is "$RP" relay ok
    check "the outbox is empty" bus_is "$RP" outbox_pending 0
    on_bus() {
        curl -s --noproxy '*' -m 2 -H "Authorization: Bearer $TOKEN" \
            "http://127.0.0.1:$RB/api/v1/events?type=product.created" | grep -q "\"subject\":\"$PROD\""
    }
    check "the event bus holds the event" wait_until 10 on_bus
    check "the secret appears in no output or log" \
        test -n "$SECRET" -a -z "$(grep -rlF -- "$SECRET" "$RDATA/logs" "$T/real.out" "$T/real.err")"
    kill -TERM "$G"
    check "gravity with the real services exits after SIGTERM" wait_until 15 gone "$G"
    wait "$G"
    check "... with status 0" test $? -eq 0
    for s in "${REAL[@]}"; do
        check "$s drained and exited 0" file_has "$T/real.err" "service stopped.*$s.*exit 0"
    done
else
    echo "# skip - no 05-auth-service, 14-event-bus-service and 17-product-service next to $GRAVITY"
fi

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
