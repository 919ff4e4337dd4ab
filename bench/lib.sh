# Shared by the benchmark scripts (sourced, not run): logging, installs of
# the peers, the corpus (Debian's linux-source tree, unpacked once under
# $WORK/corpus) and the lifeboat release build.
#
# The caller sets: ROOT, WORK, TOOLS, QUICK, RUSTIC_VERSION.
# This sets: CORPUS, CORPUS_DESC, LIFEBOAT, LIFEBOAT_OK, and log/die/apt_install.

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# ---------------------------------------------------------------- installs
apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >/dev/null
        apt_updated=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive nice -n 19 apt-get install -y -qq "$@" >/dev/null
}

[ -x /usr/bin/time ] || apt_install time
case " $TOOLS " in *" restic "*) command -v restic >/dev/null || apt_install restic ;; esac
if [ -z "${BENCH_CORPUS:-}" ] && ! compgen -G '/usr/src/linux-source-*.tar.xz' >/dev/null; then
    apt_install linux-source
fi
case " $TOOLS " in
*" rustic "*)
    if ! command -v rustic >/dev/null; then
        log "installing rustic-rs $RUSTIC_VERSION with cargo (this takes a while)"
        nice -n 19 cargo install rustic-rs --locked --version "$RUSTIC_VERSION"
    fi
    ;;
esac

# ---------------------------------------------------------------- corpus
if [ -n "${BENCH_CORPUS:-}" ]; then
    [ -d "$BENCH_CORPUS" ] || die "BENCH_CORPUS=$BENCH_CORPUS is not a directory"
    CORPUS=$(cd "$BENCH_CORPUS" && pwd -P)
    CORPUS_DESC="custom directory $CORPUS"
else
    TARBALL=$(printf '%s\n' /usr/src/linux-source-*.tar.xz | sort -V | tail -n 1)
    NAME=$(basename "$TARBALL" .tar.xz)
    if [ ! -f "$WORK/corpus/.unpacked-$NAME" ]; then
        log "unpacking $TARBALL into $WORK/corpus (once)"
        rm -rf "$WORK/corpus"
        mkdir -p "$WORK/corpus"
        tar -xJf "$TARBALL" -C "$WORK/corpus"
        touch "$WORK/corpus/.unpacked-$NAME"
    fi
    CORPUS=$(cd "$WORK/corpus/$NAME" && pwd -P)
    CORPUS_DESC="Debian $NAME (unpacked $(basename "$TARBALL"))"
    if [ "$QUICK" = 1 ]; then
        CORPUS="$CORPUS/drivers/net"
        CORPUS_DESC="$CORPUS_DESC, quick mode: drivers/net only"
    fi
fi
[ "$QUICK" = 1 ] && [ -n "${BENCH_CORPUS:-}" ] && log "BENCH_QUICK ignored: BENCH_CORPUS given"

# ---------------------------------------------------------------- lifeboat build
LIFEBOAT_OK=1
case " $TOOLS " in
*" lifeboat "*)
    if [ -n "${LIFEBOAT_BIN:-}" ]; then
        LIFEBOAT=$LIFEBOAT_BIN
    else
        LIFEBOAT=$ROOT/target/release/lifeboat
        log "cargo build --release -p lifeboat-cli"
        if ! (cd "$ROOT" && cargo build --release -p lifeboat-cli) >"$WORK/lifeboat-build.log" 2>&1; then
            log "lifeboat build FAILED (see $WORK/lifeboat-build.log); its column will read FAILED"
            LIFEBOAT_OK=0
        fi
    fi
    [ -x "$LIFEBOAT" ] || LIFEBOAT_OK=0
    ;;
*) LIFEBOAT=lifeboat ;;
esac


# ---------------------------------------------------------------- binaries
# A binary just written (a fresh build, a copy, a new `cargo install`) sits
# in the page cache in large folios, and the kernel maps more of it into a
# process at each fault: the same lifeboat binary peaked 3 MiB higher just
# after being copied than once read back from disk (`version`: 15.8 against
# 13.2 MiB, a restore of linux-source 83.4 against 80.4). So every tool's
# binary is written back and dropped from the page cache here, once, and
# peak memory compares the processes, not how recently their files were
# written.
for bin in "$LIFEBOAT" $(for t in $TOOLS; do [ "$t" = lifeboat ] || command -v "$t"; done); do
    if [ -f "$bin" ]; then
        python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$bin" ||
            log "could not drop $bin from the page cache"
    fi
done
