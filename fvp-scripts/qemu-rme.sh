#!/usr/bin/env bash
# The QEMU path to Arm CCA (ISLET.md §6): qemu-system-aarch64 -cpu max,x-rme=on
# with TF-A (RME) + TF-RMM booting Linux; or Islet's own scripts/qemu-cca.
set -euo pipefail

TFA_REPO=https://github.com/ARM-software/arm-trusted-firmware
RMM_REPO=https://github.com/TF-RMM/tf-rmm
TFA_REF=v2.12.0
RMM_REF=tf-rmm-v0.6.0
CROSS=aarch64-linux-gnu-

banner() {
    cat <<'EOF'
+--------------------------------------------------------------------------+
| PARTLY UNTESTED. On the project's machine kind (Debian 12, QEMU 10.0.2   |
| from bookworm-backports) the firmware stack this script builds -- TF-A   |
| v2.12.0 (RME) + TF-RMM v0.6.0 -- was booted by hand to Linux as BL33     |
| (ISLET.md §6.1). This script itself ran there only for --help and its    |
| prerequisite checks (no GitHub access to fetch TF-A/TF-RMM). NO REALM    |
| can be created this way: that needs a host kernel with KVM CCA support,  |
| which is not upstream and not in any Debian kernel. --mode islet is      |
| entirely untested.                                                       |
+--------------------------------------------------------------------------+
EOF
}

usage() {
    cat <<EOF
Usage: fvp-scripts/qemu-rme.sh [--mode firmware|islet] [options]

--mode firmware (default): build and boot the upstream firmware stack
  1. sources: TF-A ${TFA_REF} (${TFA_REPO}) and TF-RMM ${RMM_REF}
     (${RMM_REPO}, with submodules mbedtls, QCBOR, t_cose): --tfa/--rmm DIR, or
     --fetch to git clone them into the work directory
  2. patches TF-A's plat/qemu/common/qemu_common.c plat_rmmd_load_manifest(): the
     console checksum must cover every 64-bit word of console_info (TF-RMM checks
     them all; without it: "RMM init failed: -7")
  3. TF-RMM: cmake -DRMM_CONFIG=qemu_virt_defcfg (CROSS_COMPILE=${CROSS}) -> rmm.img
  4. TF-A: make PLAT=qemu ENABLE_RME=1 QEMU_USE_GIC_DRIVER=QEMU_GICV3 RMM=rmm.img
     BL33=<kernel Image> ARM_LINUX_KERNEL_AS_BL33=1 all fip -> flash.bin (bl1 + fip at 256 KiB)
  5. boots: qemu-system-aarch64 -M virt,virtualization=on,secure=on,gic-version=3,acpi=off
     -cpu max,x-rme=on -m 2G -bios flash.bin, serial logs in the work directory, and
     checks that the RMM initialised and Linux started; then stops and says why no
     realm can follow (no KVM CCA host support in the kernel)

--mode islet: Islet's own QEMU flow (needs an Islet tree from islet-setup.sh):
  copies the static aarch64 binaries to ISLET/out/shared/ccaml/bin and runs
  ./scripts/qemu-cca --normal-world=linux-net --realm=linux --rmm=islet --hes
  --rmm-log-level info (Islet's pinned host kernel, kvmtool, realm kernel); inside
  the realm the commands are the ones docs/fvp.md lists for the FVP.

Options:
  --work DIR         work directory (default: ./qemu-rme-work)
  --kernel IMAGE     arm64 Linux Image for BL33 (raw Image or gzip'd Image/vmlinuz);
                     required for the boot step (docs/fvp.md: getting Debian's)
  --tfa DIR          TF-A source tree at ${TFA_REF}      (default: WORK/tf-a)
  --rmm DIR          TF-RMM source tree at ${RMM_REF} with submodules (default: WORK/tf-rmm)
  --fetch            git clone the missing source trees (needs GitHub)
  --build-only       build flash.bin, do not boot
  --boot-timeout S   seconds to let QEMU run (default 120)
  --islet DIR        Islet tree (--mode islet)
  --bin-dir DIR      static aarch64 binaries (--mode islet; default: build them)
  --check            check prerequisites only
  -h, --help         this text

Prerequisites (firmware mode; Debian 12 package names):
  qemu-system-aarch64 >= 8.1 with x-rme: bookworm's 7.2 is too old; use backports:
      echo 'deb http://deb.debian.org/debian bookworm-backports main' \\
          > /etc/apt/sources.list.d/bookworm-backports.list
      apt-get update && apt-get install -y -t bookworm-backports qemu-system-arm
  cmake >= 3.28 (apt-get install -y -t bookworm-backports cmake)
  apt-get install -y gcc-aarch64-linux-gnu g++-aarch64-linux-gnu make git python3 \\
      libssl-dev device-tree-compiler
EOF
}

mode=firmware
work="$PWD/qemu-rme-work"
kernel=""
tfa=""
rmm=""
fetch=0
build_only=0
boot_timeout=120
islet=""
bin_dir=""
check=0
while [ $# -gt 0 ]; do
    case "$1" in
        --mode|--work|--kernel|--tfa|--rmm|--boot-timeout|--islet|--bin-dir)
            [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
            case "$1" in
                --mode) mode="$2" ;;
                --work) work="$2" ;;
                --kernel) kernel="$2" ;;
                --tfa) tfa="$2" ;;
                --rmm) rmm="$2" ;;
                --boot-timeout) boot_timeout="$2" ;;
                --islet) islet="$2" ;;
                --bin-dir) bin_dir="$2" ;;
            esac
            shift ;;
        --fetch) fetch=1 ;;
        --build-only) build_only=1 ;;
        --check) check=1 ;;
        -h|--help) banner; usage; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
banner
case "$mode" in firmware|islet) ;; *) echo "error: --mode must be firmware or islet" >&2; exit 2 ;; esac
[[ "$boot_timeout" =~ ^[0-9]+$ ]] || { echo "error: --boot-timeout must be a number" >&2; exit 2; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "$bin_dir" ]; then
    [ -d "$bin_dir" ] || { echo "error: --bin-dir $bin_dir: no such directory" >&2; exit 1; }
    bin_dir=$(cd "$bin_dir" && pwd)
fi

fail=0
miss() { echo "missing: $*" >&2; fail=1; }
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# ---- --mode islet --------------------------------------------------------------------
if [ "$mode" = islet ]; then
    [ -n "$islet" ] || { echo "error: --mode islet needs --islet DIR (fvp-scripts/islet-setup.sh)" >&2; exit 2; }
    [ -x "$islet/scripts/qemu-cca" ] || miss "$islet/scripts/qemu-cca (an Islet checkout with submodules: islet-setup.sh)"
    command -v qemu-system-aarch64 >/dev/null || echo "note: no qemu-system-aarch64 on PATH; Islet builds its own (third-party/qemu)"
    [ "$fail" = 0 ] || { echo "error: prerequisites missing (see above)" >&2; exit 1; }
    [ "$check" = 0 ] || { echo "prerequisites OK (--check)"; exit 0; }
    if [ -z "$bin_dir" ]; then
        "$repo/fvp-scripts/build-aarch64.sh" --static --bins attest,device-agent,realm-runtime --out "$islet/out/shared/ccaml/bin" --strip
    else
        mkdir -p "$islet/out/shared/ccaml/bin"
        cp -f "$bin_dir"/attest "$bin_dir"/device-agent "$bin_dir"/realm-runtime "$islet/out/shared/ccaml/bin/"
    fi
    cp -f "$repo/testdata/models/digits_test.csv" "$islet/out/shared/ccaml/"
    cat <<'EOF'
In the realm (after ./launch-realm.sh net on the QEMU host console, as on the FVP):
  cd /shared && ./set-realm-ip.sh && insmod rsi.ko && date -s @<host epoch seconds>
  /shared/ccaml/bin/attest admit --certifier <HOST_TAP_IP>:8123 --role device --platform islet --out-dir /tmp/id
  (binaries on /shared are 9p: NOT measured; for a meaningful RIM put them into the
   initramfs as fvp-run-demo.sh does)
EOF
    cd "$islet"
    echo "==> ./scripts/qemu-cca --normal-world=linux-net --realm=linux --rmm=islet --hes --rmm-log-level info"
    exec ./scripts/qemu-cca --normal-world=linux-net --realm=linux --rmm=islet --hes --rmm-log-level info
fi

# ---- --mode firmware: prerequisites ------------------------------------------------------
if command -v qemu-system-aarch64 >/dev/null; then
    qv=$(qemu-system-aarch64 --version | head -n1 | grep -o '[0-9]\+\.[0-9]\+\.[0-9]\+' | head -n1)
    if ! version_ge "$qv" 8.1.0; then
        miss "qemu-system-aarch64 >= 8.1 for -cpu max,x-rme=on (found $qv); see --help for bookworm-backports"
    elif ! timeout 10 qemu-system-aarch64 -M virt,virtualization=on,secure=on,gic-version=3 \
            -cpu max,x-rme=on -display none -nodefaults -S -monitor none -serial none \
            -bios /dev/null 2>"$PWD/.qemu-rme-probe.err" </dev/null; then
        # -S keeps the CPU stopped; timeout (124) means QEMU accepted the options.
        if grep -q 'x-rme' "$PWD/.qemu-rme-probe.err"; then
            miss "a qemu-system-aarch64 that accepts -cpu max,x-rme=on: $(head -n1 "$PWD/.qemu-rme-probe.err")"
        fi
    fi
    rm -f "$PWD/.qemu-rme-probe.err"
else
    miss "qemu-system-aarch64 >= 8.1 (see --help: bookworm-backports qemu-system-arm)"
fi
for t in "${CROSS}gcc" "${CROSS}g++" make git python3 dd cmake; do
    command -v "$t" >/dev/null || case "$t" in
        "${CROSS}gcc") miss "$t (apt-get install -y gcc-aarch64-linux-gnu)" ;;
        "${CROSS}g++") miss "$t (apt-get install -y g++-aarch64-linux-gnu; TF-RMM needs it)" ;;
        cmake) miss "cmake >= 3.28 (apt-get install -y -t bookworm-backports cmake)" ;;
        *) miss "$t (apt-get install -y $t)" ;;
    esac
done
if command -v cmake >/dev/null; then
    cv=$(cmake --version | head -n1 | grep -o '[0-9]\+\.[0-9]\+\.[0-9]\+' | head -n1)
    version_ge "$cv" 3.28.0 || miss "cmake >= 3.28 for TF-RMM (found $cv): apt-get install -y -t bookworm-backports cmake"
fi
[ -f /usr/include/openssl/sha.h ] || miss "OpenSSL headers for TF-A's fiptool (apt-get install -y libssl-dev)"
[ -n "$tfa" ] || tfa="$work/tf-a"
[ -n "$rmm" ] || rmm="$work/tf-rmm"
if [ "$fetch" = 0 ]; then
    [ -d "$tfa" ] || miss "TF-A sources at $tfa (git clone --branch $TFA_REF $TFA_REPO $tfa, or --fetch)"
    [ -d "$rmm" ] || miss "TF-RMM sources at $rmm (git clone --recursive --branch $RMM_REF $RMM_REPO $rmm, or --fetch)"
fi
if [ "$build_only" = 0 ] || [ -n "$kernel" ]; then
    if [ -z "$kernel" ]; then
        miss "--kernel IMAGE: an arm64 Linux Image for BL33 (docs/fvp.md shows how to take Debian's)"
    elif [ ! -f "$kernel" ]; then
        miss "the kernel image $kernel"
    fi
fi
[ "$fail" = 0 ] || { echo "error: prerequisites missing (see above)" >&2; exit 1; }
[ "$check" = 0 ] || { echo "prerequisites OK (--check)"; exit 0; }

mkdir -p "$work"
work=$(cd "$work" && pwd)
log() { printf '\n==> %s\n' "$*"; }

# ---- 1. sources ---------------------------------------------------------------------------
if [ ! -d "$tfa" ]; then
    log "git clone --depth 1 --branch $TFA_REF $TFA_REPO $tfa"
    git clone --depth 1 --branch "$TFA_REF" "$TFA_REPO" "$tfa"
fi
if [ ! -d "$rmm" ]; then
    log "git clone --recursive --depth 1 --branch $RMM_REF $RMM_REPO $rmm"
    git clone --recursive --shallow-submodules --depth 1 --branch "$RMM_REF" "$RMM_REPO" "$rmm"
fi

# ---- 2. the console checksum fix ------------------------------------------------------------
log "patching TF-A's QEMU RMM boot manifest console checksum"
python3 - "$tfa/plat/qemu/common/qemu_common.c" <<'PY'
import sys
path = sys.argv[1]
src = open(path).read()
marker = "/* cca-ml: checksum every 64-bit word of console_info */"
if marker in src:
    print("already patched")
    sys.exit(0)
old = """\tchecksum += console_ptr[0].base + console_ptr[0].map_pages +
\t\tconsole_ptr[0].clk_in_hz + console_ptr[0].baud_rate;"""
new = marker + """
\tfor (size_t w = 0U; w < (sizeof(console_ptr[0]) / sizeof(uint64_t)); w++) {
\t\tchecksum += ((uint64_t *)&console_ptr[0])[w];
\t}"""
if old not in src:
    sys.exit("error: the console checksum lines were not found in " + path +
             "; this TF-A version differs from v2.12.0: fix plat_rmmd_load_manifest() by hand")
open(path, "w").write(src.replace(old, new, 1))
print("patched " + path)
PY

# ---- 3. TF-RMM ---------------------------------------------------------------------------------
log "TF-RMM: cmake -DRMM_CONFIG=qemu_virt_defcfg"
t0=$(date +%s)
CROSS_COMPILE=$CROSS cmake -DRMM_CONFIG=qemu_virt_defcfg -DCMAKE_BUILD_TYPE=Release \
    -S "$rmm" -B "$work/build-rmm" >"$work/rmm-cmake.log" 2>&1 ||
    { tail -n 30 "$work/rmm-cmake.log" >&2; echo "error: TF-RMM cmake failed ($work/rmm-cmake.log)" >&2; exit 1; }
CROSS_COMPILE=$CROSS cmake --build "$work/build-rmm" -j "$(nproc)" >"$work/rmm-build.log" 2>&1 ||
    { tail -n 30 "$work/rmm-build.log" >&2; echo "error: TF-RMM build failed ($work/rmm-build.log)" >&2; exit 1; }
rmm_img=$(find "$work/build-rmm" -name rmm.img -print -quit)
[ -n "$rmm_img" ] || { echo "error: no rmm.img under $work/build-rmm" >&2; exit 1; }
echo "rmm.img: $rmm_img ($(( $(date +%s) - t0 )) s)"

# ---- 4. TF-A + flash.bin ------------------------------------------------------------------
bl33="$work/Image"
if [ -n "$kernel" ]; then
    magic=$(od -An -tx1 -N2 "$kernel" | tr -d ' \n')
    if [ "$magic" = 1f8b ]; then
        gzip -dc "$kernel" >"$bl33"
    else
        cp -f "$kernel" "$bl33"
    fi
    if [ "$(dd if="$bl33" bs=1 skip=56 count=4 2>/dev/null)" != "ARMd" ]; then
        if [ "$(dd if="$bl33" bs=1 skip=4 count=4 2>/dev/null)" = "zimg" ]; then
            echo "error: $kernel is an EFI zboot image; BL33 needs the plain arm64 Image (build one, or use an Image.gz)" >&2
        else
            echo "error: $kernel is not an arm64 Linux Image (no ARMd magic at 0x38)" >&2
        fi
        exit 1
    fi
fi
log "TF-A: make PLAT=qemu ENABLE_RME=1 QEMU_USE_GIC_DRIVER=QEMU_GICV3 RMM=rmm.img BL33=Image ARM_LINUX_KERNEL_AS_BL33=1 all fip"
[ -f "$bl33" ] || { echo "error: --kernel IMAGE is needed to build the fip (BL33)" >&2; exit 1; }
t0=$(date +%s)
make -C "$tfa" -j "$(nproc)" CROSS_COMPILE=$CROSS PLAT=qemu ENABLE_RME=1 QEMU_USE_GIC_DRIVER=QEMU_GICV3 \
    RMM="$rmm_img" BL33="$bl33" ARM_LINUX_KERNEL_AS_BL33=1 all fip >"$work/tfa-build.log" 2>&1 ||
    { tail -n 30 "$work/tfa-build.log" >&2; echo "error: TF-A build failed ($work/tfa-build.log)" >&2; exit 1; }
out="$tfa/build/qemu/release"
for f in bl1.bin fip.bin; do [ -f "$out/$f" ] || { echo "error: $out/$f not built" >&2; exit 1; }; done
rm -f "$work/flash.bin"
dd if="$out/bl1.bin" of="$work/flash.bin" bs=4096 conv=notrunc status=none
dd if="$out/fip.bin" of="$work/flash.bin" seek=64 bs=4096 conv=notrunc status=none
echo "flash.bin: $work/flash.bin ($(( $(date +%s) - t0 )) s)"
[ "$build_only" = 0 ] || exit 0

# ---- 5. boot ---------------------------------------------------------------------------------
log "booting: qemu-system-aarch64 -cpu max,x-rme=on -bios flash.bin (up to ${boot_timeout}s)"
rm -f "$work/uart0.log" "$work/uart1.log"
set +e
timeout "$boot_timeout" qemu-system-aarch64 \
    -M virt,virtualization=on,secure=on,gic-version=3,acpi=off -cpu max,x-rme=on -m 2G -smp 2 \
    -display none -nodefaults -monitor none \
    -serial "file:$work/uart0.log" -serial "file:$work/uart1.log" \
    -bios "$work/flash.bin" </dev/null
rc=$?
set -e
[ "$rc" = 124 ] || [ "$rc" = 0 ] || echo "note: qemu exited with $rc"
cat "$work/uart0.log" "$work/uart1.log" >"$work/boot.log" 2>/dev/null || true
grep -a -i 'rmm\|booting linux\|panic\|error' "$work/boot.log" | head -n 40 || true
if grep -a -q 'RMM init failed' "$work/boot.log"; then
    echo "error: the RMM did not initialise (boot log $work/boot.log); -7 means a manifest checksum mismatch" >&2
    exit 1
fi
if ! grep -a -q 'Booting Linux on physical CPU' "$work/boot.log"; then
    echo "error: Linux did not start within ${boot_timeout}s (boot log $work/boot.log)" >&2
    exit 1
fi
cat <<EOF

Firmware stack up: TF-A (RME) + TF-RMM initialised, Linux started as BL33 (log: $work/boot.log).

STOP: no realm can be created on this stack. Creating a realm needs a host kernel
with KVM CCA support (the cca-host series, not in upstream Linux or any Debian
kernel) and a realm VMM (kvmtool with --realm, or QEMU's rme-guest branch). With
those, boot that kernel instead (--kernel), then inside it start a realm with a
guest kernel >= 6.13 with CONFIG_ARM_CCA_GUEST (e.g. Debian trixie-backports'
arm64 kernel) and the static binaries from fvp-scripts/build-aarch64.sh --static;
'attest evidence' / '--platform tsm' then read configfs-tsm. Note TF-A's QEMU port
returns a fixed test platform token: trust it only as an INSECURE test platform.
Or use Islet's pinned stack: fvp-scripts/qemu-rme.sh --mode islet --islet DIR.
EOF
