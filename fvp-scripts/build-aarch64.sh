#!/usr/bin/env bash
# Cross-build the project's binaries for aarch64-unknown-linux-gnu (Arm CCA
# realms on Islet/FVP, QEMU-RME, or qemu-aarch64 user mode).
set -euo pipefail

TARGET=aarch64-unknown-linux-gnu
CROSS_CC=aarch64-linux-gnu-gcc
CROSS_AR=aarch64-linux-gnu-ar
ALL_BINS=(attest certifier-service model-provider realm-runtime device-agent)

usage() {
    cat <<EOF
Usage: fvp-scripts/build-aarch64.sh [--static] [--bins LIST] [--out DIR [--strip]] [--install-prereqs]

Cross-builds the release binaries for ${TARGET} with the Debian cross gcc as
linker and as C compiler (ring, aws-lc-sys and tract-linalg build C/assembly):

    ${ALL_BINS[*]}

Options:
  --static           link statically (-C target-feature=+crt-static, glibc).
                     Static binaries run in any aarch64 Linux (a buildroot realm
                     rootfs, qemu-aarch64 without -L). Without it the binaries
                     need glibc >= 2.36's loader: qemu-aarch64 -L /usr/aarch64-linux-gnu.
  --bins LIST        comma-separated subset of the binaries (default: all five),
                     e.g. --bins attest,device-agent
  --out DIR          copy the built binaries into DIR (created if missing)
  --strip            strip the copies in DIR (aarch64-linux-gnu-strip): the release
                     profile keeps line tables, so device-agent is ~180 MB unstripped
  --install-prereqs  install what is missing instead of only naming it
                     (apt-get as root; rustup target add)
  -h, --help         this text

Prerequisites (checked; the exact install command is printed if one is missing):
  cargo + rustc      the toolchain pinned in rust-toolchain.toml
  Rust std for ${TARGET}:
                     rustup target add ${TARGET} --toolchain <pinned>
  ${CROSS_CC}:
                     apt-get install -y gcc-aarch64-linux-gnu   (Debian/Ubuntu)

Binaries land in target/${TARGET}/release/ (or \$CARGO_TARGET_DIR/...; cargo
keys artifacts by target, so this does not disturb host builds). Tested on Debian 12 (bookworm) amd64.
EOF
}

static=0
out=""
bins_csv=""
install=0
strip=0
while [ $# -gt 0 ]; do
    case "$1" in
        --static) static=1 ;;
        --out) [ $# -ge 2 ] || { echo "error: --out needs a directory" >&2; exit 2; }; out="$2"; shift ;;
        --out=*) out="${1#--out=}" ;;
        --bins) [ $# -ge 2 ] || { echo "error: --bins needs a list" >&2; exit 2; }; bins_csv="$2"; shift ;;
        --bins=*) bins_csv="${1#--bins=}" ;;
        --install-prereqs) install=1 ;;
        --strip) strip=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

bins=()
if [ -n "$bins_csv" ]; then
    IFS=, read -r -a bins <<<"$bins_csv"
    for b in "${bins[@]}"; do
        case " ${ALL_BINS[*]} " in
            *" $b "*) ;;
            *) echo "error: unknown binary '$b' (known: ${ALL_BINS[*]})" >&2; exit 2 ;;
        esac
    done
else
    bins=("${ALL_BINS[@]}")
fi

missing=0
need() { # need MESSAGE COMMAND...: report a missing prerequisite, or install it
    local what="$1"; shift
    if [ "$install" = 1 ]; then
        echo "==> installing $what: $*"
        "$@" || { echo "error: could not install $what (network?); command was: $*" >&2; exit 1; }
    else
        echo "missing: $what" >&2
        echo "    install with: $*" >&2
        missing=1
    fi
}

if ! command -v cargo >/dev/null || ! command -v rustc >/dev/null; then
    echo "missing: cargo/rustc. Install rustup (https://rustup.rs), then run this again from the repository." >&2
    exit 1
fi
pinned=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
sysroot=$(rustc --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/$TARGET/lib" ]; then
    if command -v rustup >/dev/null; then
        # rust-std comes from rustup's download server; Debian's libstd-rust-dev
        # belongs to Debian's older rustc and cannot stand in for the pinned one.
        need "Rust standard library for $TARGET (toolchain $pinned; downloaded by rustup)" \
            rustup target add "$TARGET" --toolchain "$pinned"
    else
        echo "missing: Rust standard library for $TARGET in $sysroot, and no rustup to add it." >&2
        echo "    Debian's packaged Rust is older than the pinned $pinned, so it cannot stand in." >&2
        exit 1
    fi
fi
if ! command -v "$CROSS_CC" >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        need "$CROSS_CC (Debian package gcc-aarch64-linux-gnu)" \
            sh -c 'apt-get update -qq && apt-get install -y gcc-aarch64-linux-gnu'
    else
        need "$CROSS_CC (Debian package gcc-aarch64-linux-gnu)" \
            sudo sh -c 'apt-get update -qq && apt-get install -y gcc-aarch64-linux-gnu'
    fi
fi
if [ "$strip" = 1 ] && [ -z "$out" ]; then
    echo "error: --strip strips the copies made by --out DIR; give --out" >&2
    exit 2
fi
if [ "$missing" = 1 ]; then
    echo "error: prerequisites missing (see above; or re-run with --install-prereqs)" >&2
    exit 1
fi
# After an install, re-check rather than assume it worked.
[ -d "$sysroot/lib/rustlib/$TARGET/lib" ] || { echo "error: Rust std for $TARGET still missing" >&2; exit 1; }
command -v "$CROSS_CC" >/dev/null || { echo "error: $CROSS_CC still missing" >&2; exit 1; }

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="$CROSS_CC"
export CC_aarch64_unknown_linux_gnu="$CROSS_CC"
export AR_aarch64_unknown_linux_gnu="$CROSS_AR"
if [ "$static" = 1 ]; then
    # Target-specific flags: host build scripts and proc macros stay dynamic.
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
fi

bin_args=()
for b in "${bins[@]}"; do bin_args+=(--bin "$b"); done

mode=$([ "$static" = 1 ] && echo static || echo dynamic)
echo "==> cargo build --release --locked --target $TARGET ${bin_args[*]} ($mode)"
start=$(date +%s)
cargo build --release --locked --target "$TARGET" "${bin_args[@]}"
elapsed=$(( $(date +%s) - start ))
echo "==> built in ${elapsed}s"

dir="${CARGO_TARGET_DIR:-target}/$TARGET/release"
for b in "${bins[@]}"; do
    [ -x "$dir/$b" ] || { echo "error: $dir/$b was not produced" >&2; exit 1; }
    size=$(stat -c %s "$dir/$b")
    kind="$(file -b "$dir/$b" 2>/dev/null | cut -d, -f1-2 || true)"
    printf '    %-18s %6d KiB  %s\n' "$b" $((size / 1024)) "$kind"
    if [ "$static" = 1 ] && command -v file >/dev/null && ! file -b "$dir/$b" | grep -q 'statically linked\|static-pie'; then
        echo "error: $b is not statically linked" >&2
        exit 1
    fi
done

if [ -n "$out" ]; then
    mkdir -p "$out"
    for b in "${bins[@]}"; do
        cp -f "$dir/$b" "$out/$b"
        if [ "$strip" = 1 ]; then
            aarch64-linux-gnu-strip "$out/$b"
            printf '    %-18s %6d KiB stripped\n' "$b" $(($(stat -c %s "$out/$b") / 1024))
        fi
    done
    echo "==> copied to $out"
fi
