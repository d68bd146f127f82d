#!/usr/bin/env bash
# Set up Samsung Islet's Arm FVP environment (ISLET.md §3.1) for the CCA demo.
set -euo pipefail

# Islet commit the project's notes were written against (2025-11-07).
DEFAULT_REF=f4a89dea
ISLET_REPO=https://github.com/islet-project/islet
FVP_TGZ_NAME=FVP_Base_RevC-2xAEMvA_11.25_15_Linux64.tgz
FVP_URL=https://developer.arm.com/-/media/Files/downloads/ecosystem-models/FM_11_25/$FVP_TGZ_NAME
FVP_BIN_REL=third-party/fvp/Base_RevC_AEMvA_pkg/models/Linux64_GCC-9.3/FVP_Base_RevC-2xAEMvA

banner() {
    cat <<'EOF'
+--------------------------------------------------------------------------+
| UNTESTED: written from Islet's scripts and docs (docs/fvp.md); it has    |
| never run on the project's machines, which reach neither GitHub nor      |
| developer.arm.com. Only --help and the prerequisite checks ran there.    |
+--------------------------------------------------------------------------+
EOF
}

usage() {
    cat <<EOF
Usage: fvp-scripts/islet-setup.sh [--dir DIR] [--ref REF] [--fvp-tgz FILE] [--build] [--check]

Clones Islet (${ISLET_REPO}) at REF and runs its ./scripts/init.sh, which
  1. installs Ubuntu/Debian packages (scripts/deps/pkgs.sh; uses sudo apt),
  2. fetches ~20 git submodules, among them 'assets' (3.2 GB: toolchains, rootfs),
  3. installs Islet's Rust toolchain (scripts/deps/rust.sh),
  4. downloads the Arm FVP ${FVP_TGZ_NAME} into third-party/fvp/
     with plain wget (no Arm account needed by Islet's script at ${DEFAULT_REF}).
Then it checks that the FVP binary is where Islet's scripts expect it:
  DIR/${FVP_BIN_REL}

Options:
  --dir DIR       where to clone Islet (default: ./islet)
  --ref REF       Islet commit/branch/tag (default: ${DEFAULT_REF}, the one docs/fvp.md
                  was written against; newer commits may change script options)
  --fvp-tgz FILE  use an FVP tarball you downloaded by hand (see "Manual downloads")
                  instead of Islet's wget
  --build         afterwards build everything for the demo once (takes long):
                    ./scripts/fvp-cca -bo --normal-world=linux-net --realm=linux \\
                        --rmm=islet --hes --rmm-log-level=info
                  and the HES platform key: cd hes/cpak-generator && cargo run
                  (writes hes/out/cpak_public.pem, the CPAK fvp-run-demo.sh trusts)
  --check         only check prerequisites and network reachability; change nothing
  -h, --help      this text

Manual downloads (only if this machine cannot reach the sites):
  - The FVP: ${FVP_URL}
    (Arm's "Arm Ecosystem FVPs" page; if Arm puts it behind a login, sign in with an
    Arm account, download ${FVP_TGZ_NAME} and pass --fvp-tgz FILE).
  - Islet and its submodules come from GitHub; without GitHub access there is no
    substitute (clone elsewhere with 'git clone --recursive' and copy the tree).

Host: x86_64 Linux (Islet tests on Ubuntu 22.04; its Dockerfile is ubuntu:22.04),
about 40 GB free disk, 16 GB RAM recommended, sudo for apt and for the tap network.
EOF
}

dir="$PWD/islet"
ref=$DEFAULT_REF
fvp_tgz=""
build=0
check=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) [ $# -ge 2 ] || { echo "error: --dir needs a value" >&2; exit 2; }; dir="$2"; shift ;;
        --ref) [ $# -ge 2 ] || { echo "error: --ref needs a value" >&2; exit 2; }; ref="$2"; shift ;;
        --fvp-tgz) [ $# -ge 2 ] || { echo "error: --fvp-tgz needs a file" >&2; exit 2; }; fvp_tgz="$2"; shift ;;
        --build) build=1 ;;
        --check) check=1 ;;
        -h|--help) banner; usage; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
banner

# ---- prerequisites -----------------------------------------------------------
fail=0
miss() { echo "missing: $*" >&2; fail=1; }
[ "$(uname -s)" = Linux ] || miss "a Linux host (the FVP package used here is Linux64)"
[ "$(uname -m)" = x86_64 ] || miss "an x86_64 host: $FVP_TGZ_NAME is the x86_64 FVP; on an arm64 host use Arm's Linux64_armv8l FVP package and adapt Islet's scripts/config_fvp.py"
for tool in git python3 wget tar make; do
    command -v "$tool" >/dev/null || miss "$tool (apt-get install -y $tool)"
done
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    miss "sudo: Islet's scripts/deps/pkgs.sh and configure_tap.sh call sudo"
fi
if [ -n "$fvp_tgz" ] && [ ! -f "$fvp_tgz" ]; then miss "the FVP tarball $fvp_tgz"; fi
parent=$(dirname "$dir")
if [ -d "$parent" ]; then
    free_gb=$(( $(df -Pk "$parent" | awk 'NR==2 {print $4}') / 1024 / 1024 ))
    [ "$free_gb" -ge 40 ] || echo "warning: only ${free_gb} GB free under $parent; Islet with assets and builds needs about 40 GB" >&2
else
    miss "parent directory $parent"
fi

reach() { # reach NAME CMD...: network check with a timeout
    local name="$1"; shift
    if timeout 20 "$@" >/dev/null 2>&1; then
        echo "reachable: $name"
    else
        echo "NOT reachable: $name" >&2
        return 1
    fi
}
net_ok=1
if command -v git >/dev/null; then
    reach "GitHub ($ISLET_REPO)" git ls-remote "$ISLET_REPO" HEAD || net_ok=0
fi
if [ -z "$fvp_tgz" ] && command -v wget >/dev/null; then
    reach "developer.arm.com (FVP)" wget -q --spider "$FVP_URL" || net_ok=0
fi
if [ "$net_ok" = 0 ]; then
    cat >&2 <<EOF

This machine cannot reach what Islet's setup downloads. Do by hand:
  1. On a machine with GitHub access:
       git clone --recursive $ISLET_REPO islet && (cd islet && git checkout $ref && git submodule update --init --recursive)
     and copy the tree here (then re-run with --dir pointing at it).
  2. Download $FVP_URL
     (if Arm asks for a login: an Arm account, then the "Arm Ecosystem FVPs" page,
     "Base RevC AEM FVP", Linux x86_64, version 11.25_15) and pass --fvp-tgz FILE.
EOF
    fail=1
fi
if [ "$fail" = 1 ]; then
    echo "error: prerequisites missing (see above)" >&2
    exit 1
fi
if [ "$check" = 1 ]; then
    echo "prerequisites OK (--check: nothing changed)"
    exit 0
fi

# ---- clone and init ------------------------------------------------------------
if [ -d "$dir/.git" ]; then
    echo "==> using existing Islet checkout $dir"
else
    echo "==> git clone $ISLET_REPO $dir"
    git clone "$ISLET_REPO" "$dir"
fi
cd "$dir"
echo "==> git checkout $ref"
git checkout "$ref"

if [ -n "$fvp_tgz" ] && [ ! -x "$FVP_BIN_REL" ]; then
    # Islet's scripts/deps/simulator.sh skips the download when third-party/fvp exists.
    echo "==> unpacking $fvp_tgz into third-party/fvp"
    mkdir -p third-party/fvp
    tar -xzf "$fvp_tgz" -C third-party/fvp
fi

echo "==> ./scripts/init.sh (packages, submodules, Rust, FVP; long: several GB)"
./scripts/init.sh

if [ ! -x "$FVP_BIN_REL" ]; then
    echo "error: the FVP binary is not at $dir/$FVP_BIN_REL after init.sh." >&2
    echo "    Download $FVP_URL by hand and re-run with --fvp-tgz FILE." >&2
    exit 1
fi
echo "FVP: $dir/$FVP_BIN_REL"
[ -d assets/prebuilt ] || echo "warning: assets/prebuilt is missing: the 'assets' submodule did not come down" >&2

if [ "$build" = 1 ]; then
    echo "==> ./scripts/fvp-cca -bo --normal-world=linux-net --realm=linux --rmm=islet --hes --rmm-log-level=info"
    ./scripts/fvp-cca -bo --normal-world=linux-net --realm=linux --rmm=islet --hes --rmm-log-level=info
    echo "==> HES platform key (CPAK): hes/cpak-generator"
    (cd hes/cpak-generator && cargo run)
    [ -f hes/out/cpak_public.pem ] || { echo "error: hes/out/cpak_public.pem was not written" >&2; exit 1; }
    for f in out/bl1.bin out/fip.bin out/boot.img out/shared/lkvm out/shared/linux.realm \
             out/shared/rootfs-realm.cpio.gz out/shared/rsi.ko out/shared/launch-realm.sh; do
        [ -e "$f" ] || echo "warning: $f was not produced" >&2
    done
fi

cat <<EOF

Islet is set up in $dir.
Next (from the cca-ml repository):
  fvp-scripts/fvp-run-demo.sh --islet $dir
EOF
