#!/usr/bin/env bash
# Smoke test of the aarch64 binaries under qemu-aarch64 user mode: the
# evidence layer (attest) and a device-agent flow, on loopback only.
set -euo pipefail

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

usage() {
    cat <<EOF
Usage: fvp-scripts/qemu-smoke.sh [--bin-dir DIR] [--services-bin-dir DIR] [--quick] [--keep]

Runs the aarch64 binaries under qemu-aarch64 (user mode; no CCA, no realm) from the
repository root and exits non-zero at the first step that fails. Every command is
printed before it runs, with its time.

Steps (all on the INSECURE emulated platform; nothing leaves 127.0.0.1):
  1. attest --version; attest demo (bundled real token verified, tampered and
     stale tokens refused, emulated tokens signed and verified)
  2. attest platform-key generate; attest emulate; attest token verify
  3. device-agent import (testdata/models/digits_test.csv, --sample-shape 1,8,8), list
  4. (skipped with --quick) the on-device flow: certifier-service init, policy trust
     (device = the aarch64 device-agent's SHA-512), model-provider seal (digits CNN,
     released to role device for use on-device), certifier-service serve and
     model-provider serve on 127.0.0.1, then under qemu device-agent fetch-model
     (admission + attested TLS + key release + sealed store) and infer --local:
     expects 340/360 correct, as on x86_64
  5. device-agent delete; list shows the handle gone

Options:
  --bin-dir DIR           aarch64 binaries (default: target/${TARGET}/release,
                          as fvp-scripts/build-aarch64.sh leaves them)
  --services-bin-dir DIR  run certifier-service and model-provider natively from DIR
                          (e.g. target/release or target/debug) instead of as aarch64
                          binaries under qemu; needs only attest and device-agent for aarch64
  --quick                 steps 1-3 and 5 only (needs attest and device-agent only)
  --keep                  keep the work directory (printed at the end)
  -h, --help              this text

Prerequisites: qemu-aarch64 (apt-get install -y qemu-user), and for dynamically
linked binaries the aarch64 glibc in ${SYSROOT} (libc6-arm64-cross, installed with
gcc-aarch64-linux-gnu). Build first: fvp-scripts/build-aarch64.sh
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin_dir="$repo/target/$TARGET/release"
svc_dir=""
quick=0
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) [ $# -ge 2 ] || { echo "error: --bin-dir needs a directory" >&2; exit 2; }; bin_dir="$2"; shift ;;
        --bin-dir=*) bin_dir="${1#--bin-dir=}" ;;
        --services-bin-dir) [ $# -ge 2 ] || { echo "error: --services-bin-dir needs a directory" >&2; exit 2; }; svc_dir="$2"; shift ;;
        --services-bin-dir=*) svc_dir="${1#--services-bin-dir=}" ;;
        --quick) quick=1 ;;
        --keep) keep=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
cd "$repo"
[ -d "$bin_dir" ] || { echo "error: no directory $bin_dir (build first: fvp-scripts/build-aarch64.sh)" >&2; exit 1; }
bin_dir=$(cd "$bin_dir" && pwd)
if [ -n "$svc_dir" ]; then
    [ -d "$svc_dir" ] || { echo "error: no directory $svc_dir" >&2; exit 1; }
    svc_dir=$(cd "$svc_dir" && pwd)
fi

# ---- prerequisites ---------------------------------------------------------
fail=0
if ! command -v qemu-aarch64 >/dev/null; then
    echo "missing: qemu-aarch64 (user mode). Install with: apt-get install -y qemu-user" >&2
    fail=1
fi
needed=(attest device-agent)
if [ "$quick" = 0 ] && [ -z "$svc_dir" ]; then needed+=(certifier-service model-provider); fi
for b in "${needed[@]}"; do
    if [ ! -x "$bin_dir/$b" ]; then
        echo "missing: $bin_dir/$b. Build with: fvp-scripts/build-aarch64.sh --bins $(IFS=,; echo "${needed[*]}")" >&2
        fail=1
    elif command -v file >/dev/null && ! file -b "$bin_dir/$b" | grep -q 'ARM aarch64'; then
        echo "error: $bin_dir/$b is not an aarch64 executable: $(file -b "$bin_dir/$b")" >&2
        fail=1
    fi
done
if [ "$quick" = 0 ] && [ -n "$svc_dir" ]; then
    for b in certifier-service model-provider; do
        [ -x "$svc_dir/$b" ] || { echo "missing: $svc_dir/$b (cargo build --release -p $b)" >&2; fail=1; }
    done
fi
[ "$fail" = 0 ] || exit 1

qemu=(qemu-aarch64)
if command -v file >/dev/null && file -b "$bin_dir/attest" | grep -q 'dynamically linked' &&
    [ ! -e "$SYSROOT/lib/ld-linux-aarch64.so.1" ]; then
    echo "missing: $SYSROOT/lib/ld-linux-aarch64.so.1 for the dynamically linked binaries." >&2
    echo "    Install with: apt-get install -y libc6-arm64-cross   (or build with --static)" >&2
    exit 1
fi
# The aarch64 loader and libraries for dynamic binaries; harmless for static ones.
[ ! -d "$SYSROOT" ] || qemu+=(-L "$SYSROOT")

# ---- helpers ---------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/qemu-smoke.XXXXXX")
pids=()
cleanup() {
    local rc=$?
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ "$keep" = 1 ] || [ "$rc" != 0 ]; then
        echo "work directory kept: $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT

t0=$(date +%s)
step() { printf '\n==> %s\n' "$*"; }
# run LABEL CMD...: print, run, time; output goes to $work/last.out (and the terminal)
run() {
    local s e
    printf '+ %s\n' "$*" | sed "s#$bin_dir/##g; s#$work/#\$W/#g"
    s=$(date +%s%N)
    if ! "$@" >"$work/last.out" 2>"$work/last.err"; then
        cat "$work/last.out"; cat "$work/last.err" >&2
        echo "FAILED: $*" >&2
        exit 1
    fi
    e=$(date +%s%N)
    # At most 40 lines of at most 240 characters: JSON answers are one long line.
    sed 's/^/    /' "$work/last.out" | head -n 40 | cut -c1-240
    printf '    (%d ms)\n' $(( (e - s) / 1000000 ))
}
arm() { local b="$1"; shift; run "${qemu[@]}" "$bin_dir/$b" "$@"; }
# start_server NAME CMD...: background it, wait for "listening on ADDR", set $addr
start_server() {
    local name="$1"; shift
    local out="$work/$name.out" i
    printf '+ %s &\n' "$*" | sed "s#$bin_dir/##g; s#$work/#\$W/#g"
    RUST_LOG=warn "$@" >"$out" 2>"$work/$name.err" &
    pids+=("$!")
    for i in $(seq 1 300); do
        if grep -q 'listening on' "$out" 2>/dev/null; then
            addr=$(grep -m1 'listening on' "$out" | awk '{print $NF}')
            echo "    $name listening on $addr (after $((i / 10)).$((i % 10)) s)"
            return 0
        fi
        if ! kill -0 "${pids[-1]}" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "FAILED: $name did not start; its stderr:" >&2
    cat "$work/$name.err" >&2
    exit 1
}

W=$work
key="$W/cpak.key.pem"
P=(--state "$W/agent" --platform insecure-emulated --platform-key "$key")

echo "qemu-aarch64 smoke test: $("${qemu[0]}" --version | head -n1)"
echo "binaries: $bin_dir ($(file -b "$bin_dir/attest" 2>/dev/null | cut -d, -f1-2 || echo '?'))"
[ -n "$svc_dir" ] && echo "services (native): $svc_dir"
echo "work directory: \$W = $W"

# ---- 1. attest ---------------------------------------------------------------
step "1. attest --version / attest demo (qemu-aarch64)"
arm attest --version
arm attest demo

# ---- 2. emulated evidence round trip ----------------------------------------
step "2. platform key, emulated token, verification (qemu-aarch64)"
arm attest platform-key generate --out "$key" --public-out "$W/cpak.pub.pem"
challenge=$(printf '%0128d' 7)
arm attest emulate --platform-key "$key" --challenge "$challenge" --out "$W/token.cbor"
arm attest token verify "$W/token.cbor" --cpak "$W/cpak.pub.pem" --challenge "$challenge"

# ---- 3. device-agent sealed store -------------------------------------------
step "3. device-agent import / list (qemu-aarch64)"
arm device-agent import "${P[@]}" --csv testdata/models/digits_test.csv --labels last --sample-shape 1,8,8
handle=$(tr -d '[:space:]' <"$work/last.out")
[[ "$handle" =~ ^[0-9a-f]{32}$ ]] || { echo "FAILED: import printed no handle: $handle" >&2; exit 1; }
arm device-agent list "${P[@]}"
grep -q "$handle" "$work/last.out" || { echo "FAILED: list does not show $handle" >&2; exit 1; }

# ---- 4. on-device inference with a fetched model ----------------------------
if [ "$quick" = 0 ]; then
    step "4. certifier + provider on 127.0.0.1, fetch-model and infer --local (device-agent under qemu-aarch64)"
    if [ -n "$svc_dir" ]; then
        svc() { local b="$1"; shift; run "$svc_dir/$b" "$@"; }
        svc_cmd() { local b="$1"; shift; printf '%s\n' "$svc_dir/$b"; }
        svc_prefix=()
    else
        svc() { arm "$@"; }
        svc_cmd() { printf '%s\n' "$bin_dir/$1"; }
        svc_prefix=("${qemu[@]}")
    fi
    cert_bin=$(svc_cmd certifier-service)
    prov_bin=$(svc_cmd model-provider)
    svc certifier-service init --dir "$W/svc" --insecure-emulated-platform "$W/cpak.pub.pem"
    # The emulated RIM is the SHA-512 of the executable; under qemu-user that is
    # the aarch64 binary itself (qemu maps /proc/self/exe to it).
    svc certifier-service policy trust --dir "$W/svc" --role device --binary "$bin_dir/device-agent"
    svc certifier-service policy trust --dir "$W/svc" --role provider --binary "$prov_bin"
    ks=(--keystore "$W/keys.json" --keystore-key "$W/kek.bin")
    svc model-provider seal --model testdata/models/digits_cnn.onnx --id cnn --store "file://$W/blobs" \
        "${ks[@]}" --allow-role device --use on-device --output top-k=3
    start_server certifier "${svc_prefix[@]}" "$cert_bin" serve --dir "$W/svc" --listen 127.0.0.1:0
    cert_addr=$addr
    start_server provider "${svc_prefix[@]}" "$prov_bin" serve --listen 127.0.0.1:0 \
        --certifier "$cert_addr" --policy-cert "$W/svc/policy_cert.der" --platform insecure-emulated \
        --platform-key "$key" --allow-insecure-peers "${ks[@]}"
    prov_addr=$addr
    A=(--certifier "$cert_addr" --policy-cert "$W/svc/policy_cert.der" --allow-insecure-peers)
    arm device-agent fetch-model "${P[@]}" "${A[@]}" --provider "$prov_addr" --store "file://$W/blobs" --model cnn
    arm device-agent infer "${P[@]}" --local --model cnn --handle "$handle" --json
    correct=$(grep -o '"correct": *[0-9]*' "$work/last.out" | grep -o '[0-9]*$' || true)
    where=$(grep -o '"where": *"[a-z-]*"' "$work/last.out" | grep -o '"[a-z-]*"$' || true)
    if [ "$correct" != 340 ] || [ "$where" != '"on-device"' ]; then
        echo "FAILED: expected 340/360 correct on-device, got correct=$correct where=$where" >&2
        exit 1
    fi
    echo "    on-device accuracy under qemu-aarch64: $correct/360 (as on x86_64)"
else
    step "4. skipped (--quick): no certifier/provider, no fetch-model, no inference"
fi

# ---- 5. delete ---------------------------------------------------------------
step "5. device-agent delete / list (qemu-aarch64)"
arm device-agent delete "${P[@]}" --handle "$handle"
arm device-agent list "${P[@]}"
if grep -q "$handle" "$work/last.out"; then echo "FAILED: $handle still listed" >&2; exit 1; fi

step "qemu-aarch64 smoke test passed in $(( $(date +%s) - t0 )) s"
