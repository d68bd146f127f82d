#!/usr/bin/env bash
# Boot Islet's FVP, launch a CCA realm that holds the aarch64 binaries, and run
# the trust flow inside it with real CCA evidence (ISLET.md §3-§5).
set -euo pipefail

FVP_BIN_REL=third-party/fvp/Base_RevC_AEMvA_pkg/models/Linux64_GCC-9.3/FVP_Base_RevC-2xAEMvA

banner() {
    cat <<'EOF'
+--------------------------------------------------------------------------+
| UNTESTED: written from Islet's scripts and docs (docs/fvp.md). It has    |
| never booted an FVP: the project's machines cannot download the FVP or   |
| Islet. Only --help, the prerequisite checks, --prepare-only (against a   |
| stand-in Islet tree) and the expect script (against a stand-in console)  |
| ran there. Expect to adjust prompts and timeouts on a real FVP.          |
+--------------------------------------------------------------------------+
EOF
}

usage() {
    cat <<EOF
Usage: fvp-scripts/fvp-run-demo.sh --islet DIR [options]

Runs the device side of the trust flow in an Arm CCA realm on Islet's FVP:

 host (this PC)                         FVP host Linux          realm (Islet RMM)
 certifier-service on HOST_TAP_IP:8123   lkvm run --realm  -->   attest admit --platform P
   trusts the FVP's CPAK (HES)                                    device-agent import /
 model-provider on HOST_TAP_IP:8200                               fetch-model / infer --local
   (INSECURE emulated, host side)        /shared (9p) = out/shared: sealed blobs, data

Steps:
 1. checks prerequisites; cross-builds attest, device-agent, realm-runtime statically
    (fvp-scripts/build-aarch64.sh --static) and certifier-service, model-provider,
    attest for the host (cargo build --release), unless --bin-dir/--host-bin-dir given
 2. builds Islet once: ./scripts/fvp-cca -bo --normal-world=linux-net --realm=linux
    --rmm=islet --hes --rmm-log-level=info   (skipped with --run-only)
 3. reads the platform key: hes/out/cpak_public.pem (runs hes/cpak-generator if absent)
 4. realm images: Islet's rootfs-realm.cpio.gz + a cpio with /opt/cca-ml/bin/...
    -> out/shared/rootfs-ccaml-device.cpio.gz (attest, device-agent) and
       out/shared/rootfs-ccaml-runtime.cpio.gz (attest, realm-runtime), and
    launch-ccaml-{device,runtime}.sh (Islet's launch-realm.sh with that initrd).
    The binaries are in the initramfs, so they count toward the realm's RIM.
 5. certifier policy: trust-platform --cpak (the FVP CPAK), provider = the host
    model-provider build (INSECURE emulated), device = --rim HEX, or trust on first
    use: the realm asks once, is refused, and the RIM from the audit log is trusted
 6. boots the FVP (fvp-cca -ro ... --no-telnet), keeps telnet 5003 (RMM) drained,
    drives the console on telnet 5000 with expect: log in, ./launch-ccaml-device.sh net,
    log into the realm, set its IP and clock, run /shared/ccaml/in-realm.sh
 7. in the realm: --platform islet: insmod rsi.ko; attest admit (role device);
    device-agent import, fetch-model (attested TLS to the provider), infer --local
    (expects 340/360), delete. --platform tsm: configfs-tsm evidence (verified on
    the host against the CPAK with 'attest token verify') and attest admit; the
    device-agent store needs a sealing key, which RMM 1.0 / configfs-tsm lacks.

Options:
  --islet DIR          Islet checkout set up by fvp-scripts/islet-setup.sh (required)
  --platform P         islet (/dev/rsi, default) or tsm (configfs-tsm)
  --rim HEX            trust this RIM for the device realm instead of trust on first use
                       (compute it with cca-realm-measurements or lkvm-rim-measurer, docs/fvp.md)
  --sw-component TYPE=HEX
                       trust this firmware measurement for the component of that
                       measurement type (repeat; each type is then required); without
                       any, the CPAK entry is added with --skip-sw-components (printed)
  --bin-dir DIR        static aarch64 binaries (attest, device-agent, realm-runtime)
  --host-bin-dir DIR   host binaries (certifier-service, model-provider, attest)
  --host-tap-ip IP     PC-side tap address the realm reaches (default 192.168.10.1)
  --fvp-cca-args "..." extra arguments for Islet's fvp-cca (e.g. "--ifname=eth0 --host-ip=10.0.0.2")
  --run-only           do not rebuild Islet (keeps measurements stable)
  --prepare-only       steps 1-5 only; print the console commands to run by hand
  --timeout-min N      give up after N minutes of FVP console work (default 90)
  -h, --help           this text

Prerequisites: x86_64 Linux; the Islet tree with the FVP (islet-setup.sh); expect,
telnet, socat, cpio, gzip, openssl, python3, ip (iproute2); cargo with the aarch64
target and aarch64-linux-gnu-gcc (build-aarch64.sh checks those); sudo (Islet's tap
network). Logs go to ISLET/out/ccaml-host/.
EOF
}

islet=""
platform=islet
rim=""
components=()
bin_dir=""
host_bin_dir=""
host_ip=192.168.10.1
fvp_extra=""
run_only=0
prepare_only=0
timeout_min=90
while [ $# -gt 0 ]; do
    case "$1" in
        --islet|--platform|--rim|--sw-component|--bin-dir|--host-bin-dir|--host-tap-ip|--fvp-cca-args|--timeout-min)
            [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
            case "$1" in
                --islet) islet="$2" ;;
                --platform) platform="$2" ;;
                --rim) rim="$2" ;;
                --sw-component) components+=("$2") ;;
                --bin-dir) bin_dir="$2" ;;
                --host-bin-dir) host_bin_dir="$2" ;;
                --host-tap-ip) host_ip="$2" ;;
                --fvp-cca-args) fvp_extra="$2" ;;
                --timeout-min) timeout_min="$2" ;;
            esac
            shift ;;
        --run-only) run_only=1 ;;
        --prepare-only) prepare_only=1 ;;
        -h|--help) banner; usage; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
banner
case "$platform" in islet|tsm) ;; *) echo "error: --platform must be islet or tsm" >&2; exit 2 ;; esac
[ -z "$rim" ] || [[ "$rim" =~ ^[0-9a-fA-F]{64}([0-9a-fA-F]{64})?$ ]] || { echo "error: --rim must be 64 or 128 hex digits" >&2; exit 2; }
[[ "$timeout_min" =~ ^[0-9]+$ ]] || { echo "error: --timeout-min must be a number" >&2; exit 2; }
[ -n "$islet" ] || { echo "error: --islet DIR is required (set it up with fvp-scripts/islet-setup.sh)" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
abs_dir() { # abs_dir OPTION DIR: print DIR as an absolute path, or fail
    [ -d "$2" ] || { echo "error: $1 $2: no such directory" >&2; exit 1; }
    (cd "$2" && pwd)
}
[ -z "$bin_dir" ] || bin_dir=$(abs_dir --bin-dir "$bin_dir")
[ -z "$host_bin_dir" ] || host_bin_dir=$(abs_dir --host-bin-dir "$host_bin_dir")

# ---- 1. prerequisites ----------------------------------------------------------
fail=0
miss() { echo "missing: $*" >&2; fail=1; }
[ -d "$islet" ] || { echo "error: no directory $islet (set it up with fvp-scripts/islet-setup.sh)" >&2; exit 1; }
islet=$(cd "$islet" && pwd)
[ -x "$islet/scripts/fvp-cca" ] || miss "$islet/scripts/fvp-cca: not an Islet checkout (fvp-scripts/islet-setup.sh)"
if [ "$prepare_only" = 0 ]; then
    [ -x "$islet/$FVP_BIN_REL" ] || miss "the FVP at $islet/$FVP_BIN_REL (fvp-scripts/islet-setup.sh; manual download in docs/fvp.md)"
    [ "$(uname -m)" = x86_64 ] || miss "an x86_64 host for the Linux64 FVP"
    for t in expect telnet socat ip; do
        command -v "$t" >/dev/null || miss "$t (apt-get install -y $([ "$t" = ip ] && echo iproute2 || echo "$t"))"
    done
fi
for t in cpio gzip openssl python3; do
    command -v "$t" >/dev/null || miss "$t (apt-get install -y $t)"
done
if [ "$run_only" = 1 ] || [ "$prepare_only" = 1 ]; then
    for f in out/shared/rootfs-realm.cpio.gz out/shared/launch-realm.sh; do
        [ -e "$islet/$f" ] || miss "$islet/$f (build Islet first: run without --run-only, or islet-setup.sh --build)"
    done
    if [ "$platform" = islet ]; then
        [ -e "$islet/out/shared/rsi.ko" ] || miss "$islet/out/shared/rsi.ko (Islet's realm/linux-rsi build)"
    fi
fi
[ "$fail" = 0 ] || { echo "error: prerequisites missing (see above)" >&2; exit 1; }

work="$islet/out/ccaml-host"
shared="$islet/out/shared"
mkdir -p "$work"
log() { printf '\n==> %s\n' "$*"; }

if [ -z "$bin_dir" ]; then
    log "cross-building the realm binaries (static)"
    "$repo/fvp-scripts/build-aarch64.sh" --static --bins attest,device-agent,realm-runtime --out "$work/aarch64" --strip
    bin_dir="$work/aarch64"
fi
if [ -z "$host_bin_dir" ]; then
    log "building the host binaries"
    (cd "$repo" && cargo build --release --locked -p certifier-service -p model-provider --bin attest \
        --bin certifier-service --bin model-provider)
    host_bin_dir="$repo/target/release"
fi
for b in attest device-agent realm-runtime; do
    [ -x "$bin_dir/$b" ] || miss "$bin_dir/$b"
    if [ -x "$bin_dir/$b" ] && command -v file >/dev/null; then
        file -b "$bin_dir/$b" | grep -q 'ARM aarch64' || miss "$bin_dir/$b as an aarch64 binary"
        file -b "$bin_dir/$b" | grep -q 'statically linked\|static-pie' ||
            miss "$bin_dir/$b statically linked (build-aarch64.sh --static): the realm's buildroot libc is not ours"
    fi
done
for b in attest certifier-service model-provider; do
    [ -x "$host_bin_dir/$b" ] || miss "$host_bin_dir/$b (cargo build --release)"
done
[ "$fail" = 0 ] || { echo "error: binaries missing (see above)" >&2; exit 1; }

cd "$islet"
fvp_args=(--normal-world=linux-net --realm=linux --rmm=islet --hes --rmm-log-level=info)
if [ -n "$fvp_extra" ]; then
    read -r -a extra_words <<<"$fvp_extra"
    fvp_args+=("${extra_words[@]}")
fi

# ---- 2. Islet build ---------------------------------------------------------------
if [ "$run_only" = 0 ] && [ "$prepare_only" = 0 ]; then
    log "./scripts/fvp-cca -bo ${fvp_args[*]}"
    ./scripts/fvp-cca -bo "${fvp_args[@]}"
fi
for f in rootfs-realm.cpio.gz launch-realm.sh; do
    [ -e "$shared/$f" ] || { echo "error: $shared/$f missing after the Islet build" >&2; exit 1; }
done

# ---- 3. platform key (CPAK) --------------------------------------------------------
cpak="$islet/hes/out/cpak_public.pem"
if [ ! -f "$cpak" ]; then
    log "generating the HES CPAK: (cd hes/cpak-generator && cargo run)"
    (cd hes/cpak-generator && cargo run)
fi
[ -f "$cpak" ] || { echo "error: no CPAK at $cpak" >&2; exit 1; }
openssl pkey -pubin -in "$cpak" -noout 2>/dev/null ||
    { echo "error: $cpak is not a PEM public key (SubjectPublicKeyInfo)" >&2; exit 1; }
echo "platform key (CPAK, from Islet HES; public dummy material, so demo-grade): $cpak"
openssl pkey -pubin -in "$cpak" -text -noout | sed -n '1,2p;/ASN1 OID/p;/NIST CURVE/p'

# ---- 4. realm images with the binaries -------------------------------------------------
make_image() { # make_image NAME BIN...: Islet's initramfs + /opt/cca-ml/bin/BIN...
    local name="$1"; shift
    local stage="$work/stage-$name"
    rm -rf "$stage"
    mkdir -p "$stage/opt/cca-ml/bin"
    for b in "$@"; do install -m 0755 "$bin_dir/$b" "$stage/opt/cca-ml/bin/$b"; done
    # A second cpio archive appended to the first: the kernel unpacks both.
    (cd "$stage" && find opt | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9n) >"$work/$name-extra.cpio.gz"
    cat "$shared/rootfs-realm.cpio.gz" "$work/$name-extra.cpio.gz" >"$shared/rootfs-ccaml-$name.cpio.gz"
    sed "s/rootfs-realm\.cpio\.gz/rootfs-ccaml-$name.cpio.gz/" "$shared/launch-realm.sh" >"$shared/launch-ccaml-$name.sh"
    chmod 0755 "$shared/launch-ccaml-$name.sh"
    grep -q "rootfs-ccaml-$name.cpio.gz" "$shared/launch-ccaml-$name.sh" ||
        { echo "error: Islet's launch-realm.sh does not name rootfs-realm.cpio.gz; adapt launch-ccaml-$name.sh by hand" >&2; exit 1; }
    echo "realm image $name: $shared/rootfs-ccaml-$name.cpio.gz ($(stat -c %s "$shared/rootfs-ccaml-$name.cpio.gz") bytes), launcher launch-ccaml-$name.sh"
}
log "realm images (binaries in the measured initramfs)"
make_image device attest device-agent
make_image runtime attest realm-runtime

mkdir -p "$shared/ccaml/blobs"
cp "$repo/testdata/models/digits_test.csv" "$shared/ccaml/digits_test.csv"
challenge=$(openssl rand -hex 64)
cat >"$shared/ccaml/in-realm.sh" <<'EOF'
#!/bin/sh
# Runs inside the realm (busybox sh). Usage: in-realm.sh PHASE PLATFORM CERTIFIER PROVIDER EPOCH CHALLENGE
set -eu
phase=$1 platform=$2 cert=$3 prov=$4 epoch=$5 challenge=$6
B=/opt/cca-ml/bin
policy=/shared/ccaml/policy_cert.der
date -s "@$epoch" >/dev/null 2>&1 || echo "warning: could not set the realm clock; certificates may look expired"
case "$platform" in
    islet)
        [ -e /dev/rsi ] || insmod /shared/rsi.ko
        [ -e /dev/rsi ] || { echo "error: no /dev/rsi after insmod /shared/rsi.ko"; exit 3; } ;;
    tsm)
        grep -q ' /sys/kernel/config ' /proc/mounts || mount -t configfs none /sys/kernel/config
        [ -d /sys/kernel/config/tsm/report ] || {
            echo "error: no configfs-tsm in this realm kernel (needs CONFIG_ARM_CCA_GUEST, TSM_REPORTS); use --platform islet"
            exit 3; } ;;
esac
echo "+ attest --version"; $B/attest --version
case "$phase" in
tofu)
    echo "+ attest admit --role device --platform $platform (expected: refused, RIM not yet trusted)"
    if $B/attest admit --certifier "$cert" --role device --platform "$platform" --out-dir /tmp/ccaml-tofu; then
        echo "note: already admitted"
    fi
    exit 0 ;;
run)
    if [ "$platform" = tsm ]; then
        echo "+ attest evidence (configfs-tsm) -> /shared/ccaml/token.cbor"
        $B/attest evidence --challenge "$challenge" --out /shared/ccaml/token.cbor
    fi
    echo "+ attest admit --role device --platform $platform"
    $B/attest admit --certifier "$cert" --role device --platform "$platform" --out-dir /tmp/ccaml-id
    if [ "$platform" = islet ]; then
        P="--state /tmp/ccaml-agent --platform islet"
        A="--certifier $cert --policy-cert $policy --allow-insecure-peers"
        echo "+ device-agent import"
        # shellcheck disable=SC2086
        h=$($B/device-agent import $P --csv /shared/ccaml/digits_test.csv --labels last --sample-shape 1,8,8)
        echo "handle $h"
        echo "+ device-agent fetch-model (attested TLS to the provider on the host)"
        # shellcheck disable=SC2086
        $B/device-agent fetch-model $P $A --provider "$prov" --store file:///shared/ccaml/blobs --model cnn
        echo "+ device-agent infer --local"
        # shellcheck disable=SC2086
        $B/device-agent infer $P --local --model cnn --handle "$h"
        # shellcheck disable=SC2086
        $B/device-agent delete $P --handle "$h"
    fi
    echo "realm demo done" ;;
esac
EOF
chmod 0755 "$shared/ccaml/in-realm.sh"

# ---- 5. certifier policy and host services --------------------------------------------
log "certifier policy (host)"
rm -rf "$work/svc" "$work/keys.json" "$work/kek.bin" "$work/host-emulated.key.pem" \
    "$work/host-emulated.pub.pem" "$work/device-rim.txt" "$shared/ccaml/blobs"
mkdir -p "$shared/ccaml/blobs"
"$host_bin_dir/attest" platform-key generate --out "$work/host-emulated.key.pem" --public-out "$work/host-emulated.pub.pem"
"$host_bin_dir/certifier-service" init --dir "$work/svc" --insecure-emulated-platform "$work/host-emulated.pub.pem"
# The FVP's CPAK (Islet HES) is derived from a published dummy GUK: anyone can
# forge its tokens, so it is trusted only as INSECURE test material.
echo "note: the FVP platform key is public test material; admissions through it are INSECURE"
if [ "${#components[@]}" = 0 ]; then
    echo "note: no --sw-component given: the FVP platform is trusted without firmware reference values (--skip-sw-components)"
    "$host_bin_dir/certifier-service" policy trust-platform --dir "$work/svc" --cpak "$cpak" \
        --skip-sw-components --insecure-test-key
else
    "$host_bin_dir/certifier-service" policy trust-platform --dir "$work/svc" --cpak "$cpak" --insecure-test-key
    for c in "${components[@]}"; do
        case "$c" in
            *=*) ;;
            *) echo "error: --sw-component takes TYPE=HEX (e.g. BL2=ab12...), got '$c'" >&2; exit 2 ;;
        esac
        "$host_bin_dir/certifier-service" policy trust-component --dir "$work/svc" --cpak "$cpak" \
            --type "${c%%=*}" --measurement "${c#*=}"
    done
fi
"$host_bin_dir/certifier-service" policy trust --dir "$work/svc" --role provider --binary "$host_bin_dir/model-provider"
[ -z "$rim" ] || "$host_bin_dir/certifier-service" policy trust --dir "$work/svc" --role device --measurement "$rim"
cp "$work/svc/policy_cert.der" "$shared/ccaml/policy_cert.der"
ks=(--keystore "$work/keys.json" --keystore-key "$work/kek.bin")
"$host_bin_dir/model-provider" seal --model "$repo/testdata/models/digits_cnn.onnx" --id cnn \
    --store "file://$shared/ccaml/blobs" "${ks[@]}" --allow-role device --use on-device --output top-k=3

cert_addr="$host_ip:8123"
prov_addr="$host_ip:8200"
if [ "$prepare_only" = 1 ]; then
    cat <<EOF

Prepared (--prepare-only). By hand:
  $host_bin_dir/certifier-service serve --dir $work/svc --listen $cert_addr &
  $host_bin_dir/model-provider serve --listen $prov_addr --certifier $cert_addr \\
      --policy-cert $work/svc/policy_cert.der --platform insecure-emulated \\
      --platform-key $work/host-emulated.key.pem --allow-insecure-peers ${ks[*]} &
  (cd $islet && ./scripts/fvp-cca -ro ${fvp_args[*]} --no-telnet) &
  telnet localhost 5003        # in a second terminal: the RMM console must stay connected
  telnet localhost 5000        # FVP host: log in as root, then
    cd /shared && ./launch-ccaml-device.sh net
  # in the realm (log in as root):
    cd /shared && ./set-realm-ip.sh
    sh /shared/ccaml/in-realm.sh tofu $platform $cert_addr $prov_addr <host epoch seconds> $challenge   # if no --rim
  # on the host: trust the refused RIM from $work/svc/audit.log:
    $host_bin_dir/certifier-service policy trust --dir $work/svc --role device --measurement <RIM>
  # in the realm (set the clock: the realm starts in 1970):
    sh /shared/ccaml/in-realm.sh run $platform $cert_addr $prov_addr <host epoch seconds> $challenge
EOF
    exit 0
fi

# ---- 6. boot --------------------------------------------------------------------------
pids=()
fvp_pgid=""
cleanup() {
    local rc=$?
    if [ -n "$fvp_pgid" ]; then
        # fvp-cca stops its HES helper on SIGINT; then end the rest of its group.
        kill -INT -- "-$fvp_pgid" 2>/dev/null || true
        sleep 3
        kill -TERM -- "-$fvp_pgid" 2>/dev/null || true
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    echo "logs: $work"
    exit "$rc"
}
trap cleanup EXIT

log "booting the FVP: ./scripts/fvp-cca -ro ${fvp_args[*]} --no-telnet (log: $work/fvp-cca.log)"
setsid ./scripts/fvp-cca -ro "${fvp_args[@]}" --no-telnet >"$work/fvp-cca.log" 2>&1 &
fvp_pgid=$!
wait_for() { # wait_for SECONDS WHAT CMD...
    local secs="$1" what="$2" i; shift 2
    for ((i = 0; i < secs; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        kill -0 "$fvp_pgid" 2>/dev/null || { echo "error: fvp-cca exited; see $work/fvp-cca.log" >&2; tail -n 30 "$work/fvp-cca.log" >&2; exit 1; }
        sleep 1
    done
    echo "error: timed out after ${secs}s waiting for $what" >&2
    exit 1
}
wait_for 180 "the tap address $host_ip (Islet's configure_tap.sh)" bash -c "ip -4 -o addr show | grep -qw '$host_ip'"
wait_for 300 "the FVP console on port 5000" bash -c 'exec 3<>/dev/tcp/127.0.0.1/5000'
wait_for 60 "the RMM console on port 5003" bash -c 'exec 3<>/dev/tcp/127.0.0.1/5003'
socat -u TCP:127.0.0.1:5003 "OPEN:$work/rmm-console.log,creat,append" &
pids+=("$!")

start_server() { # start_server NAME CMD...
    local name="$1" i; shift
    RUST_LOG=info "$@" >"$work/$name.out" 2>"$work/$name.err" &
    pids+=("$!")
    for ((i = 0; i < 100; i++)); do
        grep -q 'listening on' "$work/$name.out" 2>/dev/null && { echo "$name: $(head -n1 "$work/$name.out")"; return 0; }
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.2
    done
    echo "error: $name did not start:" >&2; cat "$work/$name.err" >&2; exit 1
}
start_server certifier "$host_bin_dir/certifier-service" serve --dir "$work/svc" --listen "$cert_addr"
start_server provider "$host_bin_dir/model-provider" serve --listen "$prov_addr" --certifier "$cert_addr" \
    --policy-cert "$work/svc/policy_cert.der" --platform insecure-emulated \
    --platform-key "$work/host-emulated.key.pem" --allow-insecure-peers "${ks[@]}"

# Trust on first use: the refused RIM from the audit log becomes the device RIM.
cat >"$work/tofu.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
rim=\$(python3 - "$work/svc/audit.log" <<'PY'
import json, sys
last = ""
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("role") == "device" and r.get("verdict") == "refuse" and not r.get("insecure") and r.get("measurement"):
        last = r["measurement"]
print(last)
PY
)
[ -n "\$rim" ] || { echo "TOFU: no refused device admission with a measurement in the audit log" >&2; exit 1; }
echo "TOFU: trusting RIM \$rim for role device (compare it with cca-realm-measurements; docs/fvp.md)"
echo "\$rim" >"$work/device-rim.txt"
"$host_bin_dir/certifier-service" policy trust --dir "$work/svc" --role device --measurement "\$rim"
EOF
chmod 0755 "$work/tofu.sh"

# ---- 7. drive the consoles ------------------------------------------------------------
log "driving the FVP console (expect; transcript: $work/console.log)"
cat >"$work/demo.exp" <<'EOF'
# Arguments: timeout_secs platform cert prov challenge tofu(0/1) tofu_script
lassign $argv tmo platform cert prov challenge tofu tofu_script
set timeout $tmo
log_user 1
proc prompt {} {
    expect {
        -re {login: $} { send "root\r"; exp_continue }
        -re {[Pp]assword: $} { send "\r"; exp_continue }
        -re {# $} {}
        timeout { puts "\nTIMEOUT waiting for a shell prompt"; exit 2 }
        eof { puts "\nconsole closed"; exit 2 }
    }
}
proc phase {name platform cert prov challenge} {
    send "sh /shared/ccaml/in-realm.sh $name $platform $cert $prov [clock seconds] $challenge; echo CCAML-$name-EXIT=\$?\r"
    expect {
        -re "CCAML-$name-EXIT=(\[0-9\]+)" { return $expect_out(1,string) }
        timeout { puts "\nTIMEOUT in realm phase $name"; exit 2 }
        eof { puts "\nconsole closed"; exit 2 }
    }
}
spawn telnet 127.0.0.1 5000
send "\r"
prompt
send "cd /shared && ./launch-ccaml-device.sh net\r"
# The realm boots on the same console (minutes on the FVP); it may ask for a
# login or give a shell directly.
expect {
    -re {login: $} { send "root\r"; prompt }
    -re {\n[^\n]*# $} {}
    timeout { puts "\nTIMEOUT waiting for the realm to boot"; exit 2 }
    eof { puts "\nconsole closed"; exit 2 }
}
send "cd /shared && ./set-realm-ip.sh\r"
prompt
if {$tofu} {
    phase tofu $platform $cert $prov $challenge
    prompt
    if {[catch {exec $tofu_script} out]} { puts "\n$out"; exit 3 }
    puts "\n$out"
    send "\r"
    prompt
}
set rc [phase run $platform $cert $prov $challenge]
prompt
send "poweroff\r"
exit $rc
EOF
tofu=$([ -z "$rim" ] && echo 1 || echo 0)
set +e
expect -f "$work/demo.exp" $((timeout_min * 60)) "$platform" "$cert_addr" "$prov_addr" "$challenge" "$tofu" "$work/tofu.sh" \
    | tee "$work/console.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 0 ]; then
    echo "error: the realm demo failed (exit $rc); console transcript $work/console.log, RMM log $work/rmm-console.log" >&2
    exit 1
fi
if [ "$platform" = islet ]; then
    grep -q '340 correct' "$work/console.log" ||
        echo "warning: the transcript does not show '340 correct' (expected on-device accuracy)" >&2
else
    log "verifying the configfs-tsm token on the host against the FVP CPAK"
    "$host_bin_dir/attest" token verify "$shared/ccaml/token.cbor" --cpak "$cpak" --challenge "$challenge"
    "$host_bin_dir/attest" token inspect "$shared/ccaml/token.cbor" >"$work/token.json"
    echo "claims: $work/token.json"
fi
[ -f "$work/device-rim.txt" ] && echo "device realm RIM (trusted on first use): $(cat "$work/device-rim.txt")"
echo "FVP demo finished: admitted with real CCA evidence from the FVP (platform $platform)"
