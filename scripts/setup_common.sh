# Helpers shared by scripts/setup_runtime.sh and scripts/setup_tests.sh (sourced, not run).

step() { printf '[setup] %s\n' "$*"; }

SUDO=()
if [[ ${EUID} -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi

as_root() {
    if [[ ${EUID} -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
        step "need root for: $*" >&2
        return 1
    fi
    "${SUDO[@]}" "$@"
}

installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }

# apt_install PKG...: install those not installed yet (one apt-get update first); nothing when all are there.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do installed "${pkg}" || missing+=("${pkg}"); done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    if [[ ${EUID} -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
        step "not root and no sudo: as root, run: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    step "apt-get update"
    as_root apt-get update -q
    step "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}
