#!/usr/bin/env bash
# Real-terminal check of `contextwarden tui`, rerunnable by anyone:
#   1. a local stand-in Anthropic upstream (tests/support/upstream.py) on 127.0.0.1,
#   2. the real proxy: mitmdump -s addons/contextwarden.py in reverse mode to it, with a temp CONTEXTWARDEN_HOME,
#   3. real traffic from the anthropic SDK through the proxy,
#   4. `contextwarden tui` in detached tmux sessions at 100x30 and 80x24; `tmux capture-pane -p` of the
#      Overview and the Requests tab is printed, and the check fails unless the request row is visible.
# Usage: scripts/tmux_check.sh            (KEEP=1 keeps the temp dir; PYTHON=... picks the interpreter)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}
PY=${PYTHON:-$VENV_BIN/python}
SHARED=${CONTEXTWARDEN_SHARED:-$ROOT/../shared}
SESSION_ID=tmux-check
TAG_WORD=kubernetes

if ! command -v tmux >/dev/null; then
    echo "tmux is missing: apt-get install -y tmux" >&2
    exit 2
fi

WORK=$(mktemp -d -t cw-tmux-XXXXXX)
export CONTEXTWARDEN_HOME=$WORK/cw-home
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$SHARED/tiktoken}
export CONTEXTWARDEN_MEMORY__MODEL_DIR=${CONTEXTWARDEN_MEMORY__MODEL_DIR:-$SHARED/models/all-MiniLM-L6-v2/onnx}
export ANONYMIZED_TELEMETRY=False
mkdir -p "$CONTEXTWARDEN_HOME"
TMUX_SESSIONS=()
UPSTREAM_PID=""
PROXY_PID=""

cleanup() {
    for s in "${TMUX_SESSIONS[@]}"; do tmux kill-session -t "$s" 2>/dev/null || true; done
    if [[ -n $PROXY_PID ]]; then
        kill -INT "$PROXY_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$PROXY_PID" 2>/dev/null || true
    fi
    [[ -n $UPSTREAM_PID ]] && kill "$UPSTREAM_PID" 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

wait_for() {  # wait_for SECONDS COMMAND...: poll until COMMAND succeeds
    local deadline=$((SECONDS + $1)); shift
    until "$@" 2>/dev/null; do
        if ((SECONDS >= deadline)); then return 1; fi
        sleep 0.2
    done
}

# 1. the stand-in upstream
cd "$ROOT"
"$PY" - "$WORK/upstream.url" >"$WORK/upstream.log" 2>&1 <<'EOF' &
import signal, sys, threading
sys.path.insert(0, ".")
from tests.support.upstream import StandIn
si = StandIn().start()
open(sys.argv[1], "w").write(si.url)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
stop.wait()
si.stop()
EOF
UPSTREAM_PID=$!
wait_for 20 test -s "$WORK/upstream.url" || { echo "upstream did not start"; cat "$WORK/upstream.log"; exit 1; }
UPSTREAM=$(cat "$WORK/upstream.url")
echo "upstream: $UPSTREAM"

# 2. the proxy
"$VENV_BIN/mitmdump" --listen-host 127.0.0.1 --listen-port 0 --mode "reverse:$UPSTREAM" \
    --set "confdir=$WORK/mitmproxy" -s "$ROOT/addons/contextwarden.py" \
    --set "cw_home=$CONTEXTWARDEN_HOME" --set cw_profile=default >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
wait_for 60 grep -qiE "listening at" "$WORK/proxy.log" || { echo "proxy did not start"; cat "$WORK/proxy.log"; exit 1; }
PORT=$(grep -oiE "listening at [^ ]*:[0-9]+" "$WORK/proxy.log" | head -1 | grep -oE "[0-9]+$")
wait_for 30 test -s "$CONTEXTWARDEN_HOME/tui.json" || { echo "no tui.json"; cat "$WORK/proxy.log"; exit 1; }
echo "proxy: http://127.0.0.1:$PORT (pid $PROXY_PID), event server: $(stat -c '%a' "$CONTEXTWARDEN_HOME/tui.json") $CONTEXTWARDEN_HOME/tui.json"

# 3. real SDK traffic
"$PY" - "http://127.0.0.1:$PORT" "$SESSION_ID" <<'EOF'
import sys
import anthropic, httpx2
base, session = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(api_key="sk-ant-tmux-check-key", base_url=base, max_retries=0,
                             http_client=httpx2.Client(trust_env=False, timeout=60),
                             default_headers={"x-contextwarden-session": session})
messages = []
for q in ["How does kubernetes horizontal autoscaling react to memory pressure?",
          "And how do kubernetes pod disruption budgets interact with autoscaling?"]:
    messages.append({"role": "user", "content": q})
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=200, messages=messages) as s:
        reply = s.get_final_message()
    messages.append({"role": "assistant", "content": reply.content[0].text})
    print("sdk:", reply.stop_reason, reply.usage.input_tokens, "input tokens")
EOF

# 4. the TUI in tmux
status=0
capture() {  # capture SESSION LABEL
    echo "----- $2 -----"
    tmux capture-pane -p -t "$1" | tee "$WORK/$2.txt"
    echo "-----"
}
for size in 100x30 80x24; do
    w=${size%x*}; h=${size#*x}
    name="cwtui-$$-$size"
    TMUX_SESSIONS+=("$name")
    # Textual draws on stderr, so nothing is redirected; if the TUI dies, its traceback stays in the pane
    tmux new-session -d -s "$name" -x "$w" -y "$h" \
        "env CONTEXTWARDEN_HOME='$CONTEXTWARDEN_HOME' TERM=xterm-256color '$VENV_BIN/contextwarden' tui --export-dir '$WORK'; echo '[tui exited]' \$?; sleep 60"
    if ! wait_for 30 bash -c "tmux capture-pane -p -t '$name' | grep -q '● connected'"; then
        echo "FAIL ($size): the TUI did not connect"; capture "$name" "overview-$size"; status=1; continue
    fi
    sleep 1.5
    capture "$name" "overview-$size"
    tmux send-keys -t "$name" 2
    sleep 1.5
    capture "$name" "requests-$size"
    row=$(grep -E "^ *[0-9]+ +${SESSION_ID:0:8} .*${TAG_WORD:0:6}" "$WORK/requests-$size.txt" | head -1 || true)
    if [[ -z $row ]] || ! grep -q " 200 " <<<"$row"; then
        echo "FAIL ($size): no request row of session $SESSION_ID with tag $TAG_WORD and status 200 is visible"
        status=1
    elif ! grep -qE "tagging [0-9.]+ " "$WORK/requests-$size.txt"; then
        echo "FAIL ($size): the stage timings of the highlighted request are not visible"
        status=1
    else
        echo "ok ($size): $row"
    fi
    tmux send-keys -t "$name" q
done
exit $status
