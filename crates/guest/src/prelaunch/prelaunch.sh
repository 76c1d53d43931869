# Berth pre-launch script (made by `berth prelaunch-script`, Berth @VERSION@).
# Pulls this app's private images with Berth's boot agent: a static binary
# fetched from the URL below and checked against the sha256 pinned here
# (this script is part of the app's compose hash, so the pin is measured),
# cached on the persistent disk and checked again before each run. If the
# agent cannot be had, the default flow runs: docker login + compose pull.
# Also sets the root password and SSH keys (DSTACK_ROOT_PASSWORD,
# DSTACK_ROOT_PUBLIC_KEY, DSTACK_AUTHORIZED_KEYS) and exports DSTACK_APP_ID,
# DSTACK_GATEWAY_DOMAIN and DSTACK_APP_DOMAIN, as Phala's default script does.
# Sourced by dstack's app-compose.sh, with or without `set -euo pipefail`;
# it leaves no other variable, function or option behind.
__berth_log() {
    printf '[%s] berth-prelaunch: %s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ' 2>/dev/null || true)" "$1"
}
__berth_notify() {
    local tool=
    if command -v dstack-util >/dev/null 2>&1; then
        tool=dstack-util
    elif command -v tdxctl >/dev/null 2>&1; then
        tool=tdxctl
    else
        return 0
    fi
    if command -v timeout >/dev/null 2>&1; then
        timeout -s KILL 5 "$tool" notify-host -e "$1" -d "$2" </dev/null >/dev/null 2>&1 || true
    else
        "$tool" notify-host -e "$1" -d "$2" </dev/null >/dev/null 2>&1 || true
    fi
    return 0
}
__berth_sha256() {
    local out=
    if command -v sha256sum >/dev/null 2>&1; then
        out=$(sha256sum "$1" 2>/dev/null) || return 1
    else
        out=$(openssl dgst -sha256 -r "$1" 2>/dev/null) || return 1
    fi
    printf '%s' "${out%% *}"
}
__berth_set_shadow() {
    # Rewrites root's hash in the shadow file $1 with $2, in bash (no
    # argument carries it); `cat >` keeps the file's owner and mode.
    local file="$1" hash="$2" tmp="$1.berth.$$" line= rest=
    # The copy holds every password hash: readable by root only (umask 077
    # in a subshell, so the sourcing shell's umask stays).
    (
        umask 077
        while IFS= read -r line || [ -n "$line" ]; do
            case "$line" in
            root:*)
                rest="${line#root:}"
                rest="${rest#*:}"
                printf 'root:%s:%s\n' "$hash" "$rest"
                ;;
            *) printf '%s\n' "$line" ;;
            esac
        done <"$file" >"$tmp"
    ) || { rm -f "$tmp"; return 1; }
    cat "$tmp" >"$file" || { rm -f "$tmp"; return 1; }
    rm -f "$tmp"
}
__berth_duties() {
    local root="$1" shadow="$1/etc/shadow" ssh="$1/home/root/.ssh" hash= pw= info= cfg=
    # The root password: DSTACK_ROOT_PASSWORD, else a random one if none is set.
    if [ -n "${DSTACK_ROOT_PASSWORD:-}" ]; then
        pw="$DSTACK_ROOT_PASSWORD"
    elif [ -f "$shadow" ] && [ -z "$(grep '^root:' "$shadow" 2>/dev/null | cut -d: -f2 || true)" ]; then
        pw=$(openssl rand -base64 24 2>/dev/null || true)
        [ -n "$pw" ] && __berth_log "setting a random root password (none was set)"
    fi
    if [ -n "$pw" ]; then
        if [ -z "$root" ] && command -v chpasswd >/dev/null 2>&1; then
            if printf 'root:%s\n' "$pw" | chpasswd >/dev/null 2>&1; then
                __berth_log "root password set"
            else
                __berth_log "warning: chpasswd failed; root password unchanged"
            fi
        elif [ -w "$shadow" ] && command -v openssl >/dev/null 2>&1; then
            hash=$(printf '%s\n' "$pw" | openssl passwd -6 -stdin 2>/dev/null || true)
            if [ -n "$hash" ] && __berth_set_shadow "$shadow" "$hash"; then
                __berth_log "root password set"
            else
                __berth_log "warning: cannot write $shadow; root password unchanged"
            fi
        else
            __berth_log "warning: cannot set the root password (no chpasswd, no openssl, or $shadow read-only)"
        fi
    fi
    pw=
    hash=
    # SSH keys for root.
    if [ -n "${DSTACK_ROOT_PUBLIC_KEY:-}${DSTACK_AUTHORIZED_KEYS:-}" ] || [ -f "$root/dstack/user_config" ]; then
        if mkdir -p "$ssh" 2>/dev/null; then
            chmod 700 "$ssh" 2>/dev/null || true
            if [ -n "${DSTACK_ROOT_PUBLIC_KEY:-}${DSTACK_AUTHORIZED_KEYS:-}" ]; then
                {
                    [ -n "${DSTACK_ROOT_PUBLIC_KEY:-}" ] && printf '%s\n' "$DSTACK_ROOT_PUBLIC_KEY"
                    [ -n "${DSTACK_AUTHORIZED_KEYS:-}" ] && printf '%s\n' "$DSTACK_AUTHORIZED_KEYS"
                    true
                } >"$ssh/authorized_keys"
                __berth_log "root authorized_keys set"
            fi
            if [ -f "$root/dstack/user_config" ] &&
                [ "$(jq 'has("ssh_authorized_keys")' "$root/dstack/user_config" 2>/dev/null || true)" = true ]; then
                jq -r '.ssh_authorized_keys' "$root/dstack/user_config" >>"$ssh/authorized_keys" 2>/dev/null || true
                __berth_log "root authorized_keys: keys from the user's preferences added"
            fi
            [ -f "$ssh/authorized_keys" ] && chmod 600 "$ssh/authorized_keys" 2>/dev/null
        else
            __berth_log "warning: cannot create $ssh (read-only file system?); SSH keys not set"
        fi
    fi
    # The app's identity, for compose to interpolate.
    if [ -S "$root/var/run/dstack.sock" ]; then
        info=$(curl -s --max-time 10 --unix-socket "$root/var/run/dstack.sock" http://dstack/Info 2>/dev/null || true)
    elif [ -S "$root/var/run/tappd.sock" ]; then
        info=$(curl -s --max-time 10 --unix-socket "$root/var/run/tappd.sock" http://dstack/prpc/Tappd.Info 2>/dev/null || true)
    fi
    if [ -n "$info" ]; then
        info=$(printf '%s' "$info" | jq -j '.app_id // empty' 2>/dev/null || true)
        [ -n "$info" ] && export DSTACK_APP_ID="$info"
    fi
    if [ -z "${DSTACK_GATEWAY_DOMAIN:-}" ]; then
        for cfg in "$root/dstack/user_config" "$root/dstack/app-compose.json"; do
            [ -f "$cfg" ] || continue
            info=$(jq -j '.default_gateway_domain // empty' "$cfg" 2>/dev/null || true)
            if [ -n "$info" ]; then
                export DSTACK_GATEWAY_DOMAIN="$info"
                break
            fi
        done
    fi
    if [ -n "${DSTACK_GATEWAY_DOMAIN:-}" ] && [ -n "${DSTACK_APP_ID:-}" ]; then
        export DSTACK_APP_DOMAIN="$DSTACK_APP_ID.$DSTACK_GATEWAY_DOMAIN"
    fi
    return 0
}
__berth_fallback() {
    # The default flow: docker login (a throw-away DOCKER_CONFIG, removed
    # after the pull) + compose pull, which is allowed to fail.
    local root="$1" file="$1/dstack/docker-compose.yaml" manifest= cfg= rc=0 dc=
    __berth_log "falling back to the default flow: docker login + docker compose pull"
    if [ ! -f "$file" ]; then
        manifest="$root/dstack/app-compose.json"
        [ -f "$manifest" ] || manifest="$root/dstack/.host-shared/app-compose.json"
        jq -r '.docker_compose_file // empty' "$manifest" >"$file" 2>/dev/null || true
    fi
    if docker compose version >/dev/null 2>&1; then
        dc=v2
    elif command -v docker-compose >/dev/null 2>&1; then
        dc=v1
    else
        __berth_log "warning: no compose tool to pull with; compose up will pull"
        return 0
    fi
    cfg=$(mktemp -d 2>/dev/null || true)
    [ -n "$cfg" ] || { __berth_log "warning: no temporary folder for docker login"; return 0; }
    if [ -n "${DSTACK_DOCKER_USERNAME:-}" ] && [ -n "${DSTACK_DOCKER_PASSWORD:-}" ]; then
        __berth_log "docker login to ${DSTACK_DOCKER_REGISTRY:-docker.io}"
        if [ -n "${DSTACK_DOCKER_REGISTRY:-}" ]; then
            printf '%s\n' "$DSTACK_DOCKER_PASSWORD" | DOCKER_CONFIG="$cfg" docker login -u "$DSTACK_DOCKER_USERNAME" --password-stdin "$DSTACK_DOCKER_REGISTRY" >/dev/null 2>&1 || rc=$?
        else
            printf '%s\n' "$DSTACK_DOCKER_PASSWORD" | DOCKER_CONFIG="$cfg" docker login -u "$DSTACK_DOCKER_USERNAME" --password-stdin >/dev/null 2>&1 || rc=$?
        fi
        if [ "$rc" != 0 ]; then
            rm -rf "$cfg"
            __berth_log "docker login failed: ${DSTACK_DOCKER_REGISTRY:-docker.io}"
            __berth_notify boot.error "docker login failed"
            return 1
        fi
    fi
    if [ -n "${DSTACK_AWS_ACCESS_KEY_ID:-}" ]; then
        __berth_log "warning: ECR needs Berth's agent (or the AWS CLI of the default script): ECR images are used only if already present"
    fi
    if [ "$dc" = v2 ]; then
        DOCKER_CONFIG="$cfg" docker compose -f "$file" pull 2>&1 || rc=$?
    else
        DOCKER_CONFIG="$cfg" docker-compose -f "$file" pull 2>&1 || rc=$?
    fi
    rm -rf "$cfg"
    if [ "$rc" = 0 ]; then
        __berth_log "docker compose pull completed"
    else
        __berth_log "warning: docker compose pull failed; continuing with existing images"
    fi
    return 0
}
__berth_prelaunch() {
    local url='@URL@' pin='@SHA256@' root="${BERTH_GUEST_ROOT:-}"
    local dir="${BERTH_GUEST_ROOT:-}/dstack/persistent/berth" got= rc=0 tmp=
    local bin="$dir/bin/berth-$pin"
    __berth_log "Berth pre-launch script @VERSION@, agent sha256 $pin"
    __berth_duties "$root"
    if [ -f "$bin" ] && [ "$(__berth_sha256 "$bin" || true)" = "$pin" ]; then
        __berth_log "agent cached on the persistent disk; sha256 checked again"
    else
        rm -f "$bin" 2>/dev/null || true
        mkdir -p "$dir/bin" 2>/dev/null || true
        tmp="$dir/bin/.download.$$"
        if curl -fsSL --retry 3 --connect-timeout 10 --max-time 300 -o "$tmp" "$url" 2>/dev/null; then
            got=$(__berth_sha256 "$tmp" || true)
            if [ "$got" = "$pin" ] && chmod 700 "$tmp" && mv -f "$tmp" "$bin"; then
                __berth_log "agent downloaded from $url; sha256 checked"
            else
                __berth_log "the agent downloaded from $url has sha256 ${got:-unknown}, not the pinned $pin: it is not run"
                __berth_notify boot.progress "berth: agent sha256 mismatch"
            fi
        else
            __berth_log "cannot download the agent from $url"
        fi
        rm -f "$tmp" 2>/dev/null || true
    fi
    if [ -x "$bin" ]; then
        "$bin" guest prelaunch --root "${root:-/}" || rc=$?
        case "$rc" in
        0) return 0 ;;
        64 | 126 | 127) __berth_log "the agent cannot serve this boot (exit $rc)" ;;
        *)
            if [ "$rc" -lt 128 ]; then
                return "$rc"
            fi
            __berth_log "the agent was stopped by a signal (exit $rc)"
            ;;
        esac
    fi
    __berth_notify boot.progress "berth: default pull flow"
    __berth_fallback "$root"
}
if __berth_prelaunch; then
    unset DSTACK_ROOT_PASSWORD DSTACK_ROOT_PUBLIC_KEY DSTACK_AUTHORIZED_KEYS
    unset -f __berth_log __berth_notify __berth_sha256 __berth_set_shadow __berth_duties __berth_fallback __berth_prelaunch
else
    __berth_rc=$?
    __berth_log "pre-launch failed (exit $__berth_rc): the app is not started"
    exit "$__berth_rc"
fi
