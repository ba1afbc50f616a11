#!/usr/bin/env bash
# The Debian orthanc service must not come back at boot, and its own process must not keep the default ports
# (4242 DICOM, 8042 HTTP). Called by scripts/setup.sh; tests start their own Orthanc on free ports.
#
# Never stops a process it cannot prove is the Debian service's: no `service orthanc stop` (the init script's
# start-stop-daemon --stop --exec /usr/sbin/Orthanc falls back to stopping EVERY Orthanc on the machine, the
# test servers of other checkouts included). The service's process is found by its pid file (SysV) or by
# systemd's MainPID, and stopped only when its executable is /usr/sbin/Orthanc AND its command line names the
# Debian configuration (/etc/orthanc); anything else is left running (tests use free ports anyway).
#
# ORTHANC_PIDFILE overrides the pid file (/run/orthanc.pid, as in /etc/init.d/orthanc and orthanc.service).
set -uo pipefail

PIDFILE="${ORTHANC_PIDFILE:-/run/orthanc.pid}"
DAEMON=/usr/sbin/Orthanc
CONFIG_DIR=/etc/orthanc
PYTHON="${PYTHON:-python3}"

# shellcheck source=scripts/setup_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup_common.sh"  # step, as_root

# True when process $1 is the Debian service's Orthanc: its executable and its configuration argument.
is_debian_service_orthanc() {
    local pid="$1" exe arg
    [[ "${pid}" =~ ^[0-9]+$ && -e "/proc/${pid}" ]] || return 1
    exe="$(as_root readlink "/proc/${pid}/exe" 2>/dev/null)" || return 1
    [[ "${exe}" == "${DAEMON}" ]] || return 1
    while IFS= read -r -d '' arg; do
        [[ "${arg}" == "${CONFIG_DIR}" || "${arg}" == "${CONFIG_DIR}/" ]] && return 0
    done < <(as_root cat "/proc/${pid}/cmdline" 2>/dev/null)
    return 1
}

# Stop process $1 if (and only if) it is the Debian service's Orthanc: SIGTERM, then SIGKILL after 5 s.
stop_debian_service_pid() {
    local pid="$1" why="$2"
    if ! is_debian_service_orthanc "${pid}"; then
        step "orthanc service: ${why} names pid ${pid}, not the Debian service's Orthanc (${DAEMON} ${CONFIG_DIR}): left alone"
        return 0
    fi
    step "orthanc service: stopping its process ${pid} (${why})"
    as_root kill -TERM "${pid}" 2>/dev/null || true
    for _ in $(seq 50); do [[ -e "/proc/${pid}" ]] || return 0; sleep 0.1; done
    is_debian_service_orthanc "${pid}" && as_root kill -KILL "${pid}" 2>/dev/null || true
}

if [[ -d /run/systemd/system ]]; then
    if systemctl is-enabled --quiet orthanc 2>/dev/null; then
        step "orthanc service: systemctl disable orthanc"
        as_root systemctl disable orthanc >/dev/null 2>&1 || true
    else
        step "orthanc service: not enabled (systemd)"
    fi
    if systemctl is-active --quiet orthanc 2>/dev/null; then
        main_pid="$(systemctl show -p MainPID --value orthanc 2>/dev/null || echo 0)"
        if is_debian_service_orthanc "${main_pid}"; then
            # systemd stops only the unit's own processes (its cgroup), and will not restart it.
            step "orthanc service: systemctl stop orthanc (MainPID ${main_pid})"
            as_root systemctl stop orthanc >/dev/null 2>&1 || true
        else
            step "orthanc service: active, but MainPID ${main_pid} is not ${DAEMON} ${CONFIG_DIR}: left alone"
        fi
    fi
elif [[ -x /etc/init.d/orthanc ]]; then
    # No systemd (container, CI): the package's postinst may have enabled and started the SysV script.
    if compgen -G "/etc/rc[2-5].d/S*orthanc" >/dev/null; then
        step "orthanc service: update-rc.d orthanc disable (no systemd)"
        as_root update-rc.d orthanc disable >/dev/null 2>&1 || true
    else
        step "orthanc service: not enabled (no systemd)"
    fi
fi
# Whatever the init system: the service's process, by its pid file only.
if [[ -s "${PIDFILE}" ]]; then
    stop_debian_service_pid "$(head -c 32 "${PIDFILE}" | tr -dc 0-9)" "${PIDFILE}"
fi

busy="$("${PYTHON}" - <<'EOF' 2>/dev/null || true
import socket
for port in (4242, 8042):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            print(port, end=" ")
EOF
)"
if [[ -n "${busy}" ]]; then
    step "warning: something still listens on port(s) ${busy}(not the Debian orthanc service; tests use free ports)"
else
    step "ports 4242/8042: free"
fi
exit 0
