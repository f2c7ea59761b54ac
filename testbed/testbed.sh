#!/usr/bin/env bash
# The integration-test bed: Debian roots built with debootstrap and entered with chroot inside a
# private mount namespace, so no mount outlives a command. One root per flavour:
#
#   sid             Debian sid, Python 3.14, Asterisk 22 from Debian's packages (the default)
#   bookworm-ast20  Debian 12, Python 3.11, Asterisk 20.20.1 built from source
#   trixie-ast23    Debian 13, Python 3.13, Asterisk 23.4.1 built from source
#
#   testbed/testbed.sh [--flavour F] provision   build the root, or reuse it (idempotent, cached, locked)
#   testbed/testbed.sh [--flavour F] run [--scratch] [--] CMD...
#                       run CMD in the root: repo at /src (read-write), cwd /src; --scratch runs it
#                       on a throw-away overlay of the root (nothing it installs stays)
#   testbed/testbed.sh [--flavour F] shell       an interactive shell in the root
#   testbed/testbed.sh [--flavour F] status      what is there; exit 0 only when the root is ready
#   testbed/testbed.sh [--flavour F] destroy     remove the root
#   testbed/testbed.sh flavours                  the flavours: name, Debian suite, Python, Asterisk
#
# A source flavour's root is: debootstrap + testbed/packages-source.txt, then the Asterisk release
# tree from shared/asterisk-src (SHA256SUMS checked) configured without bundled pjproject/jansson,
# the modules of testbed/asterisk-modules.txt, `make -j2 install install-headers`; then the
# prerequisites block of docs/INSTALL.md for its Debian release, run verbatim.
#
# Environment:
#   CONVAI_FLAVOUR         the flavour when --flavour is not given (default sid)
#   CONVAI_TESTBED         the sid root's location (default /var/cache/app-elevenlabs-convai/testbed)
#   CONVAI_TESTBED_BASE    where the other flavours' roots live (default /var/cache/app-elevenlabs-convai);
#                          each is testbed-FLAVOUR there
#   CONVAI_TESTBED_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   CONVAI_TESTBED_SUITE   Debian suite of the sid flavour (default sid)
#   CONVAI_ASTERISK_SRC    the Asterisk source tarballs (default: shared/asterisk-src beside the repo)
# `run` passes CI and every CONVAI_* variable through; everything else is reset. It sets
# CONVAI_BUILD_DIR, CONVAI_STAGE_DIR, CONVAI_MODULE and CONVAI_PYTHON_DIR (unless set) to
# /var/tmp/convai-{build,stage}.ID in the root, ID from the repository's path: worktrees sharing
# a root do not overwrite each other's builds.
set -euo pipefail

# Bump when the way the root is built changes: a root made by another version is rebuilt.
PROVISION_VERSION=1
# The source flavours' build recipe has its own version: bumping it rebuilds only those roots.
SOURCE_VERSION=1

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}
export PATH LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
REPO=$(cd "$HERE/.." && pwd -P)
MIRROR=${CONVAI_TESTBED_MIRROR:-http://deb.debian.org/debian}
ROOT_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE=${CONVAI_TESTBED_BASE:-/var/cache/app-elevenlabs-convai}
INSTALL_MD=$REPO/docs/INSTALL.md

# The flavours: name, Debian suite, Python, Asterisk (what `flavours` prints, test.sh iterates).
FLAVOURS_TABLE="\
sid             sid       3.14  22 (Debian's asterisk package)
bookworm-ast20  bookworm  3.11  20.20.1 (from source)
trixie-ast23    trixie    3.13  23.4.1 (from source)"
FLAVOUR=${CONVAI_FLAVOUR:-sid}
if [ "${1:-}" = --flavour ]; then
  FLAVOUR=${2:?--flavour needs a name}
  shift 2
elif [ "${1:-}" != "${1#--flavour=}" ]; then
  FLAVOUR=${1#--flavour=}
  shift
fi
AST_VERSION="" # set for the flavours whose Asterisk is built from source
case $FLAVOUR in
  sid)
    SUITE=${CONVAI_TESTBED_SUITE:-sid}
    PACKAGES_FILE=$HERE/packages.txt
    ROOT=${CONVAI_TESTBED:-$BASE/testbed}
    ;;
  bookworm-ast20 | trixie-ast23)
    SUITE=${FLAVOUR%-ast*}
    AST_VERSION=$(awk -v f="$FLAVOUR" '$1 == f { print $4 }' <<<"$FLAVOURS_TABLE")
    PACKAGES_FILE=$HERE/packages-source.txt
    ROOT=$BASE/testbed-$FLAVOUR
    ;;
  *)
    printf '[testbed] ERROR: unknown flavour %s (known: %s)\n' "$FLAVOUR" \
      "$(awk '{ print $1 }' <<<"$FLAVOURS_TABLE" | paste -sd ' ')" >&2
    exit 2
    ;;
esac
MODULES_FILE=$HERE/asterisk-modules.txt
export CONVAI_FLAVOUR=$FLAVOUR # seen by the tests in the root (run passes CONVAI_* through)
case $ROOT in /*) ;; *) ROOT=$PWD/$ROOT ;; esac
ROOT=$(realpath -m -- "$ROOT")
NEW=$ROOT.new
LOCK=$ROOT.lock
MARKER=$ROOT/.convai-testbed
DEBOOTSTRAP_LOG=$ROOT.debootstrap.log
APT_LOG=$ROOT.apt.log

log() { printf '[testbed] %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

sanity() {
  [ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and mount need it)"
  if [ "$ROOT" = / ] || [ "$(dirname -- "$ROOT")" = / ]; then die "refusing testbed root '$ROOT'"; fi
  case $REPO/ in "$ROOT"/*) die "the testbed root '$ROOT' must not contain the repository" ;; esac
}

# The package list, normalised: comments and blanks dropped, one name a line, sorted.
packages() {
  [ -f "$PACKAGES_FILE" ] || die "missing $PACKAGES_FILE"
  sed 's/#.*//' "$PACKAGES_FILE" | tr -s '[:blank:]' '\n' | sed '/^$/d' | sort -u
}
# The prerequisites block of docs/INSTALL.md that a source flavour runs (empty for sid).
prereq_block() { [ -z "$AST_VERSION" ] || bash "$HERE/install-md.sh" "prerequisites-$SUITE" "$INSTALL_MD"; }
packages_sha() { { packages; prereq_block; } | sha256sum | cut -d' ' -f1; }
version_sha() {
  {
    printf 'provision-version=%s suite=%s\n' "$PROVISION_VERSION" "$SUITE"
    if [ -n "$AST_VERSION" ]; then
      printf 'source-version=%s asterisk=%s\n' "$SOURCE_VERSION" "$AST_VERSION"
      sed 's/#.*//; /^[[:space:]]*$/d' "$MODULES_FILE"
    fi
  } | sha256sum | cut -d' ' -f1
}
marker_get() { sed -n "s/^$1=//p" "$MARKER" 2>/dev/null | head -n 1; }

lock() { # lock MODE(-x|-s): held on fd 9 until this shell exits
  mkdir -p -- "$(dirname -- "$LOCK")"
  exec 9>"$LOCK"
  if ! flock -n "$1" 9; then
    log "waiting for another testbed.sh holding $LOCK ..."
    flock "$1" 9
  fi
}

# Unmount whatever is still mounted at or below a directory (a killed run outside a namespace,
# a hand-made mount), deepest first.
unmount_under() {
  local dir=$1 m
  awk -v p="$dir" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo |
    sort -r | while read -r m; do
      log "unmounting stale mount $m"
      umount -l -- "$m" || true
    done
}

remove_dir() {
  local dir=$1
  [ -e "$dir" ] || return 0
  unmount_under "$dir"
  if awk -v p="$dir" '$5 == p || index($5, p "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    die "something is still mounted below $dir; not removing it"
  fi
  rm -rf --one-file-system -- "$dir"
}

ensure_host_tools() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v unshare >/dev/null && command -v flock >/dev/null || missing+=(util-linux)
  if [ ! -f /usr/share/keyrings/debian-archive-keyring.gpg ] && ! grep -qs '^ID=debian' /etc/os-release; then
    missing+=(debian-archive-keyring) # Ubuntu: needed to verify Debian's Release files
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing on the host: ${missing[*]}"
  command -v apt-get >/dev/null || die "no apt-get here: install ${missing[*]} by hand"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
    command -v debootstrap >/dev/null || die "could not install ${missing[*]}"
}

# Run a command chrooted into a root, inside a private mount namespace (re-enters this script as
# the hidden subcommand __ns). SRC=1 also binds the repo at /src; CWD is the working directory.
# Provisioning commands inherit the lock (fd 9): if this script is killed, whatever they leave
# running keeps the lock until it ends, so no second provision can race with it.
# SCRATCH=DIR mounts an overlay of ROOTDIR (upper and work dirs in DIR) and enters that instead,
# in a PID namespace of its own too: whatever the command leaves running dies with it.
in_root() { # in_root ROOTDIR CMD...
  local r=$1
  shift
  if [ -n "${SCRATCH:-}" ]; then
    unshare -m --pid --fork --kill-child --propagation private -- \
      bash "$SELF" __ns "$r" "${SRC:-0}" "${CWD:-/}" "$@"
  else
    unshare -m --propagation private -- bash "$SELF" __ns "$r" "${SRC:-0}" "${CWD:-/}" "$@"
  fi
}

# pip in the root reaches PyPI only through the host's CA bundle (a TLS-inspecting proxy's CA
# may be in it): the host's replaces the root's, as resolv.conf does.
host_ca() { # host_ca ROOTDIR
  local ca=/etc/ssl/certs/ca-certificates.crt
  [ -s "$ca" ] && [ -d "$1/etc/ssl/certs" ] || return 0
  cmp -s "$ca" "$1$ca" || cp -L "$ca" "$1$ca" 2>/dev/null || true
}

ns_enter() { # (inside the namespace) __ns ROOTDIR SRC CWD CMD...
  local r=$1 src=$2 cwd=$3 v
  shift 3
  [ $# -gt 0 ] || set -- /bin/bash
  if [ -n "${SCRATCH:-}" ]; then
    mkdir -p "$SCRATCH/upper" "$SCRATCH/work" "$SCRATCH/merged"
    mount -t overlay overlay -o "lowerdir=$r,upperdir=$SCRATCH/upper,workdir=$SCRATCH/work" "$SCRATCH/merged"
    r=$SCRATCH/merged
  fi
  mount -t proc proc "$r/proc"
  mount -t sysfs sysfs "$r/sys" 2>/dev/null || true
  mount --bind /dev "$r/dev"
  mount --bind /dev/pts "$r/dev/pts" 2>/dev/null || true
  mkdir -p "$r/dev/shm" 2>/dev/null || true
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$r/dev/shm" 2>/dev/null || true
  if [ "$src" = 1 ]; then
    mkdir -p "$r/src"
    mount --bind "$REPO" "$r/src"
  fi
  rm -f "$r/etc/resolv.conf"
  cp -L /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
  host_ca "$r"
  local env=(HOME=/root "PATH=$ROOT_PATH" LANG=C.UTF-8 SHELL=/bin/bash DEBIAN_FRONTEND=noninteractive)
  [ -n "${TERM:-}" ] && env+=("TERM=$TERM")
  for v in $(compgen -e); do
    case $v in CI | CONVAI_*) env+=("$v=${!v}") ;; esac
  done
  # shellcheck disable=SC2016 # $0 and $@ belong to the inner shell
  exec chroot "$r" /usr/bin/env -i "${env[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "$cwd" "$@"
}

health() { # health ROOTDIR: asterisk (and its headers) and the Python dependencies answer
  in_root "$1" /bin/sh -c 'asterisk -V && test -f /usr/include/asterisk/buildopts.h &&
    python3 -c "import websockets, aiohttp, cffi; import sys; print(\"Python\", sys.version.split()[0])"'
}

# The directory holding the Asterisk release tarballs and their SHA256SUMS.
asterisk_src_dir() {
  local d
  for d in "${CONVAI_ASTERISK_SRC:-}" "$REPO/../shared/asterisk-src" "$REPO/../../shared/asterisk-src" \
    /work/shared/asterisk-src; do
    [ -n "$d" ] && [ -f "$d/SHA256SUMS" ] && {
      (cd "$d" && pwd -P)
      return 0
    }
  done
  die "no Asterisk source tarballs (SHA256SUMS) found: set CONVAI_ASTERISK_SRC"
}

# A minimal Asterisk from the release tree, built and installed inside the root DIR: Debian's
# libjansson (the bundled one would be downloaded), no pjproject (so no chan_pjsip), only the
# modules of asterisk-modules.txt, no sound downloads. Log: $ROOT.asterisk.log.
build_asterisk() { # build_asterisk DIR
  local r=$1 src tarball t mods
  t=$(now)
  src=$(asterisk_src_dir)
  tarball=asterisk-$AST_VERSION.tar.xz
  [ -f "$src/$tarball" ] || die "$src/$tarball is missing"
  log "checking $tarball against $src/SHA256SUMS ..."
  (cd "$src" && grep -E "  $tarball\$" SHA256SUMS | sha256sum -c --strict --quiet -) ||
    die "$src/$tarball does not match SHA256SUMS"
  mkdir -p "$r/usr/src"
  rm -rf -- "$r/usr/src/asterisk-$AST_VERSION"
  tar -C "$r/usr/src" -xJf "$src/$tarball"
  mods=$(sed 's/#.*//' "$MODULES_FILE" | tr -s '[:blank:]' '\n' | sed '/^$/d' | paste -sd ' ')
  log "building Asterisk $AST_VERSION (core + $(wc -w <<<"$mods") modules, make -j2; log: $ROOT.asterisk.log) ..."
  # shellcheck disable=SC2016 # expanded by the inner shell
  if ! CWD=/usr/src/asterisk-$AST_VERSION in_root "$r" /bin/bash -euo pipefail -c '
    ./configure --prefix=/usr --libdir=/usr/lib --sysconfdir=/etc --localstatedir=/var \
      --with-jansson --without-jansson-bundled --without-pjproject-bundled --without-pjproject
    make menuselect.makeopts
    args=(--disable-all)
    for c in MENUSELECT_CORE_SOUNDS MENUSELECT_MOH MENUSELECT_EXTRA_SOUNDS; do args+=(--disable-category "$c"); done
    for m in $0; do args+=(--enable "$m"); done
    menuselect/menuselect "${args[@]}" menuselect.makeopts
    make -j2
    make install
    make install-headers
    ldconfig
    asterisk -V
  ' "$mods" >"$ROOT.asterisk.log" 2>&1; then
    tail -n 40 "$ROOT.asterisk.log" >&2
    die "the Asterisk build failed; full log: $ROOT.asterisk.log"
  fi
  local m missing=()
  for m in $mods; do [ -f "$r/usr/lib/asterisk/modules/$m.so" ] || missing+=("$m"); done
  [ ${#missing[@]} -eq 0 ] || die "Asterisk $AST_VERSION built without: ${missing[*]} (see $ROOT.asterisk.log)"
  rm -rf -- "$r/usr/src/asterisk-$AST_VERSION"
  log "Asterisk $AST_VERSION built and installed: $(since "$t")"
}

# Debian's sound packages install to /usr/share/asterisk/sounds/en_US_f_Allison; a source
# install reads ASTDATADIR/sounds/en with ASTDATADIR=/var/lib/asterisk.
link_sounds() { # link_sounds DIR
  local r=$1
  mkdir -p "$r/var/lib/asterisk/sounds"
  ln -sfn /usr/share/asterisk/sounds/en_US_f_Allison "$r/var/lib/asterisk/sounds/en"
}

# The prerequisites block of docs/INSTALL.md for this Debian release, verbatim, as root.
run_prerequisites() { # run_prerequisites DIR
  local r=$1 t
  t=$(now)
  log "running docs/INSTALL.md's prerequisites-$SUITE block in the root (log: $ROOT.prereq.log) ..."
  prereq_block | sed 's/^/[testbed]   | /' >&2
  # shellcheck disable=SC2016
  if ! in_root "$r" /bin/bash -euxo pipefail -c "$(prereq_block)" >"$ROOT.prereq.log" 2>&1; then
    tail -n 40 "$ROOT.prereq.log" >&2
    die "INSTALL.md's prerequisites-$SUITE block failed; full log: $ROOT.prereq.log"
  fi
  in_root "$r" apt-get clean
  link_sounds "$r"
  log "prerequisites: $(since "$t")"
}

# Why the root at $ROOT cannot be used as it is (empty when it can).
root_problem() {
  [ -d "$ROOT" ] || {
    echo "absent"
    return
  }
  [ -f "$MARKER" ] || {
    echo "partial (no completion marker)"
    return
  }
  [ "$(marker_get version_sha256)" = "$(version_sha)" ] || {
    echo "made by another provisioning version"
    return
  }
  health "$ROOT" >/dev/null 2>&1 || {
    echo "broken (asterisk -V or the Python imports fail)"
    return
  }
}

write_marker() { # write_marker DIR CREATED
  local dir=$1 created=$2
  {
    echo "version=$PROVISION_VERSION"
    echo "version_sha256=$(version_sha)"
    echo "packages_sha256=$(packages_sha)"
    echo "suite=$SUITE"
    echo "mirror=$MIRROR"
    echo "created=$created"
    echo "updated=$(date -u +%FT%TZ)"
    echo "packages=$(packages | paste -sd ' ')"
  } >"$dir/.convai-testbed.tmp"
  mv -f "$dir/.convai-testbed.tmp" "$dir/.convai-testbed"
}

configure_root() { # apt and dpkg settings for a chroot that never runs daemons
  local r=$1
  mkdir -p "$r/etc/apt/apt.conf.d" "$r/usr/sbin" "$r/src"
  printf 'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n' >"$r/etc/apt/apt.conf.d/99nocheck"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\nDpkg::Use-Pty "false";\nAcquire::Retries "3";\n' \
    >"$r/etc/apt/apt.conf.d/99testbed"
  printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
  chmod 755 "$r/usr/sbin/policy-rc.d"
  rm -f "$r/etc/resolv.conf"
  cp -L /etc/resolv.conf "$r/etc/resolv.conf"
  host_ca "$r"
}

apt_install_all() { # apt_install_all ROOTDIR: finish what debootstrap left, then every listed package
  local r=$1 rc=0
  local -a pkgs
  mapfile -t pkgs < <(packages)
  log "apt-get installing into $r (log: $APT_LOG) ..."
  {
    in_root "$r" apt-get update -q &&
      { in_root "$r" dpkg --configure -a || true; } &&
      in_root "$r" apt-get -f install -y -q &&
      in_root "$r" apt-get install -y -q "${pkgs[@]}" &&
      in_root "$r" apt-get clean
  } >"$APT_LOG" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    tail -n 40 "$APT_LOG" >&2
    die "apt-get failed in $r (exit $rc); full log: $APT_LOG"
  fi
  grep -E '^[0-9]+ upgraded, [0-9]+ newly installed' "$APT_LOG" | sed 's/^/[testbed] apt-get: /' >&2 || true
}

debootstrap_into() { # debootstrap_into DIR INCLUDES: returns whether DIR now holds a usable base
  local dir=$1 include=$2
  local -a args=(--variant=minbase "--include=$include")
  if [ -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
    args+=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
  else
    log "WARNING: no Debian archive keyring on this host: Release signatures are not checked"
    args+=(--no-check-gpg)
  fi
  remove_dir "$dir"
  mkdir -p -- "$dir"
  # In its own mount namespace: whatever debootstrap mounts dies with it, even when it fails.
  if ! unshare -m --propagation private -- debootstrap "${args[@]}" "$SUITE" "$dir" "$MIRROR" \
    >"$DEBOOTSTRAP_LOG" 2>&1; then
    log "debootstrap exited non-zero (expected: it does not resolve virtual dependencies such as" \
      "lintian's perl-openssl-abi-3); apt-get completes the root. Its log: $DEBOOTSTRAP_LOG"
  fi
  [ -x "$dir/usr/bin/apt-get" ] && [ -x "$dir/usr/bin/dpkg" ] && [ -s "$dir/var/lib/dpkg/status" ] &&
    [ -x "$dir/bin/sh" ]
}

build_from_scratch() {
  local t create
  t=$(now)
  create=$(date -u +%FT%TZ)
  remove_dir "$NEW"
  remove_dir "$ROOT"
  log "debootstrap $SUITE (minbase + $(packages | wc -l) packages) into $NEW ..."
  if ! debootstrap_into "$NEW" "$(packages | paste -sd ,)"; then
    tail -n 25 "$DEBOOTSTRAP_LOG" >&2 || true
    log "no usable base system; retrying debootstrap with a bare minbase, apt-get installs the rest"
    debootstrap_into "$NEW" ca-certificates || {
      tail -n 40 "$DEBOOTSTRAP_LOG" >&2 || true
      die "debootstrap failed twice; see $DEBOOTSTRAP_LOG"
    }
  fi
  log "debootstrap: $(since "$t")"
  local t2
  t2=$(now)
  configure_root "$NEW"
  apt_install_all "$NEW"
  log "apt-get completion: $(since "$t2")"
  if [ -n "$AST_VERSION" ]; then
    build_asterisk "$NEW"
    run_prerequisites "$NEW"
  fi
  health "$NEW" >&2 || die "the new root fails its health check (asterisk -V / python3 imports)"
  write_marker "$NEW" "$create"
  mv -T -- "$NEW" "$ROOT"
  log "testbed built from scratch in $(since "$t"): $ROOT ($(du -sh --one-file-system "$ROOT" | cut -f1))"
}

install_difference() {
  local t old new added removed
  t=$(now)
  old=$(marker_get packages | tr ' ' '\n' | sed '/^$/d' | sort -u)
  new=$(packages)
  added=$(comm -13 <(echo "$old") <(echo "$new") | paste -sd ' ')
  removed=$(comm -23 <(echo "$old") <(echo "$new") | paste -sd ' ')
  log "packages.txt changed: added [${added}] removed [${removed}]"
  [ -z "$removed" ] || log "removed packages stay installed (run 'destroy' then 'provision' for a clean root)"
  configure_root "$ROOT"
  apt_install_all "$ROOT"
  [ -z "$AST_VERSION" ] || run_prerequisites "$ROOT"
  health "$ROOT" >&2 || die "the root fails its health check after installing the difference"
  write_marker "$ROOT" "$(marker_get created)"
  log "installed the difference in $(since "$t")"
}

cmd_provision() {
  sanity
  local t problem
  t=$(now)
  ensure_host_tools
  # The common case, a ready root, only needs a shared lock: it does not wait for `run`s.
  lock -s
  if [ ! -e "$NEW" ] && [ -z "$(root_problem)" ] &&
    [ "$(marker_get packages_sha256)" = "$(packages_sha)" ]; then
    log "cached root is up to date: $ROOT"
    log "provision: $(since "$t")"
    return 0
  fi
  flock -u 9
  lock -x
  if [ -e "$NEW" ]; then
    log "removing $NEW, left by an interrupted build"
    remove_dir "$NEW"
  fi
  problem=$(root_problem)
  if [ -n "$problem" ]; then
    log "root $ROOT is $problem: building it from scratch"
    build_from_scratch
  elif [ "$(marker_get packages_sha256)" != "$(packages_sha)" ]; then
    install_difference
  else
    log "cached root is up to date: $ROOT"
  fi
  log "provision: $(since "$t")"
}

need_ready() {
  [ -f "$MARKER" ] || die "no testbed at $ROOT: run '$SELF provision' first"
}

# Each worktree builds into its own dirs in the shared root (seven engineers share the sid root):
# scripts/build.sh, the tests, the demo and the benchmarks read these variables.
worktree_dirs() {
  local id
  id=$(printf '%s' "$REPO" | sha256sum | cut -c1-8)
  export CONVAI_BUILD_DIR=${CONVAI_BUILD_DIR:-/var/tmp/convai-build.$id}
  export CONVAI_STAGE_DIR=${CONVAI_STAGE_DIR:-/var/tmp/convai-stage.$id}
  export CONVAI_MODULE=${CONVAI_MODULE:-$CONVAI_BUILD_DIR/app_elevenlabs_convai.so}
  export CONVAI_PYTHON_DIR=${CONVAI_PYTHON_DIR:-$CONVAI_STAGE_DIR/python}
  export CONVAI_HOST_REPO=$REPO # what /src is on the host, for paths shown to the user
}

cmd_run() {
  sanity
  worktree_dirs
  local scratch=""
  if [ "${1:-}" = --scratch ]; then
    scratch=$(mktemp -d "${TMPDIR:-/var/tmp}/convai-scratch.XXXXXX")
    shift
  fi
  [ "${1:-}" = -- ] && shift
  [ $# -gt 0 ] || die "usage: testbed.sh run [--scratch] [--] CMD..."
  lock -s
  need_ready
  local rc=0
  # The command does not inherit the shared lock (this shell holds it until the command ends): a
  # process it leaves behind must not block a later provision. A scratch run holds it (its PID
  # namespace ends with it), since the overlay's lower dir must not change under it.
  if [ -n "$scratch" ]; then
    SCRATCH=$scratch SRC=1 CWD=/src in_root "$ROOT" "$@" || rc=$?
    rm -rf --one-file-system -- "$scratch"
  else
    SRC=1 CWD=/src in_root "$ROOT" "$@" 9>&- || rc=$?
  fi
  return "$rc"
}

cmd_shell() {
  sanity
  worktree_dirs
  lock -s
  need_ready
  local rc=0
  SRC=1 CWD=/src in_root "$ROOT" /bin/bash -i 9>&- || rc=$?
  return "$rc"
}

cmd_status() {
  sanity
  echo "root:      $ROOT"
  if [ ! -d "$ROOT" ]; then
    echo "state:     absent"
    return 1
  fi
  local problem
  problem=$(root_problem)
  echo "state:     ${problem:-ready}"
  if [ -f "$MARKER" ]; then
    echo "created:   $(marker_get created)"
    echo "updated:   $(marker_get updated)"
    echo "suite:     $(marker_get suite)"
    if [ "$(marker_get packages_sha256)" = "$(packages_sha)" ]; then
      echo "packages:  in sync with testbed/packages.txt"
    else
      echo "packages:  testbed/packages.txt changed since (provision installs the difference)"
    fi
  fi
  echo "size:      $(du -sh --one-file-system "$ROOT" 2>/dev/null | cut -f1)"
  if [ -z "$problem" ]; then
    in_root "$ROOT" /bin/sh -c 'asterisk -V; python3 --version; sipp -v 2>/dev/null | grep -m1 SIPp | sed "s/^ *//"' |
      sed 's/^/           /'
    return 0
  fi
  return 1
}

cmd_destroy() {
  sanity
  lock -x
  remove_dir "$NEW"
  remove_dir "$ROOT"
  rm -f -- "$DEBOOTSTRAP_LOG" "$APT_LOG"
  log "removed $ROOT"
}

usage() {
  sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
}

main() {
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case $cmd in
    provision) cmd_provision "$@" ;;
    run) cmd_run "$@" ;;
    shell) cmd_shell "$@" ;;
    status) cmd_status "$@" ;;
    destroy) cmd_destroy "$@" ;;
    flavours) printf '%s\n' "$FLAVOURS_TABLE" ;;
    __ns) ns_enter "$@" ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

# One line, parsed whole before it runs: an edit of this file during a long `run` cannot make
# bash read on at a shifted offset.
main "$@"; exit
