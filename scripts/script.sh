#!/usr/bin/env bash
# The legacy `session` tool's command line (commands, flags, JSON shapes and
# exit statuses as docs/legacy.md records them), now served by sessiond.
#
#   bash scripts/script.sh COMMAND [ARGS]      (from any directory)
#
# All the work is done by sessionctl.shim.main, started with one exec, so
# that a command costs one interpreter start and one round trip. It is the
# function that the `session` command (installed by `pip install .`) runs:
# `session COMMAND [ARGS]` answers exactly as this script does.
#
# Which Python runs it, first match wins:
#   1. $SESSIOND_PYTHON, when set;
#   2. the interpreter named in the shebang of the `sessionctl` found on PATH
#      (pip's `#!/bin/sh` + `'''exec' "PYTHON"` form for long paths included),
#      so the shim runs from the same installation as sessionctl and so finds
#      the daemon exactly as it does: SESSIOND_SOCKET, SESSIOND_DATA_DIR,
#      SESSIOND_CONFIG, SESSIONCTL_NO_AUTOSTART, and the same autostart;
#   3. python3.
set -uo pipefail

fail() {
    local msg=${1//\\/\\\\}
    msg=${msg//\"/\\\"}
    printf '{"error": "%s"}\n' "$msg" >&2
    exit 1
}

sessionctl_python() {
    # `hash` resolves through PATH without forking, unlike $(command -v).
    local ctl first="" second="" interp rest
    hash sessionctl 2>/dev/null || return 1
    ctl=${BASH_CMDS[sessionctl]:-}
    [[ -n $ctl && -r $ctl ]] || return 1
    { IFS= read -r first; IFS= read -r second; } <"$ctl"
    [[ $first == '#!'* ]] || return 1
    read -r interp rest <<<"${first#\#!}"
    case ${interp##*/} in
        sh | bash | dash)
            [[ $second =~ ^\'\'\'exec\'\ \"([^\"]+)\" ]] || return 1
            interp=${BASH_REMATCH[1]}
            ;;
        env)
            read -r interp _ <<<"$rest"
            ;;
    esac
    [[ -n $interp ]] || return 1
    printf -v REPLY '%s' "$interp"
}

if [[ -n ${SESSIOND_PYTHON:-} ]]; then
    python=$SESSIOND_PYTHON
elif sessionctl_python; then
    python=$REPLY
else
    python=python3
fi

if [[ $python == */* ]]; then
    [[ -x $python && ! -d $python ]] || fail "cannot run Python $python (set SESSIOND_PYTHON to the Python that has sessiond installed)"
elif ! hash "$python" 2>/dev/null; then
    fail "no $python on PATH (set SESSIOND_PYTHON to the Python that has sessiond installed)"
fi

# -c puts the current directory first on sys.path; it is dropped so that a
# file there named like one of our modules cannot stand in for it.
exec "$python" -c '
import sys
if sys.path and sys.path[0] == "":
    del sys.path[0]
try:
    from sessionctl.shim import main
except ImportError as exc:
    import json
    sys.stderr.write(json.dumps({"error": "cannot load the session shim with %s: %s (set SESSIOND_PYTHON to the Python that has sessiond installed)" % (sys.executable, exc)}) + "\n")
    sys.exit(1)
sys.exit(main())
' "$@"
