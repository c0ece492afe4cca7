#!/usr/bin/env bash
# A commented tour of PhantomLink's control API with curl, against a live stack:
#
#     make run                                # terminal 1: broker, control, bridges, front door
#     bash examples/curl_walkthrough.sh       # terminal 2
#
# PHANTOM_URL overrides where control is reached (default http://127.0.0.1:8000, the front door;
# control's own port is 8002). docs/control.md is the full reference; /docs on the server renders the same offline.
set -euo pipefail
# (sed -n, not head, trims long answers: head would close the pipe under curl and trip pipefail.)

BASE="${PHANTOM_URL:-http://127.0.0.1:8000}"
CODE="${WALKTHROUGH_CODE:-curl-walkthrough}"
JSON=(-H "Content-Type: application/json")
# With PHANTOM_AUTH_TOKEN set (as for the server), every call carries it.
AUTH=()
[[ -n "${PHANTOM_AUTH_TOKEN:-}" ]] && AUTH=(-H "Authorization: Bearer $PHANTOM_AUTH_TOKEN")

# Print one step's title, the request, and the pretty-printed answer with its HTTP status.
step() { printf '\n### %s\n' "$1"; }
call() {
    local method="$1" path="$2" body="${3:-}"
    echo "\$ curl -X $method $BASE$path${body:+ -d '$body'}"
    local args=(-sS -X "$method" -w '\n[HTTP %{http_code}]\n' "${AUTH[@]}" "$BASE$path")
    [[ -n "$body" ]] && args+=("${JSON[@]}" -d "$body")
    curl "${args[@]}" | pretty
}
# Pretty-print JSON when python3 is around; plain text (Prometheus, status lines) passes through.
pretty() {
    python3 -c '
import json, sys
text = sys.stdin.read()
body, _, status = text.rpartition("\n[HTTP ")
try:
    print(json.dumps(json.loads(body), indent=2))
except ValueError:
    print(body)
print("[HTTP " + status.strip())
' 2>/dev/null || cat
}

step "Is control up, and can it reach the broker? (/health is 200 even when the broker is down)"
call GET /health

step "Start clean: delete the walkthrough session if an earlier run left it (404 otherwise)"
call DELETE "/api/sessions/$CODE"

step "Create a session with a custom code (omit the body for a generated code like swift-neural-42)"
call POST /api/sessions/create "{\"custom_code\": \"$CODE\"}"

step "Creating the same code again is a conflict (409)"
call POST /api/sessions/create "{\"custom_code\": \"$CODE\"}"

step "Our extras at creation: speed, loop, paused, filter and noise in one go"
call POST /api/sessions/create '{"custom_code": "curl-options", "speed": 2.0, "loop": false, "paused": true, "filter": {"target_id": 0}, "noise": "light"}'

step "List every session (the original's shape: sessions keyed by code, total_sessions)"
call GET /api/sessions

step "One session, and its playback statistics"
call GET "/api/sessions/$CODE"
call GET "/api/stats/$CODE"

step "Pause, then resume (deadlines are re-anchored on resume: no burst of catch-up packets)"
call POST "/api/control/$CODE/pause"
call POST "/api/control/$CODE/resume"

step "Seek to packet 1000 (25 s into the recording at 25 ms bins); past the end is 422"
call POST "/api/control/$CODE/seek" '{"packet_id": 1000}'
call POST "/api/control/$CODE/seek" '{"packet_id": 99999999}'

step "Play twice as fast (0.1 to 1000); a string is a type error (400)"
call POST "/api/control/$CODE/speed" '{"speed": 2.0}'
call POST "/api/control/$CODE/speed" '{"speed": "fast"}'

step "Play only the trials reaching for target 0, then only trial 3, then clear the filter"
call POST "/api/control/$CODE/filter" '{"target_id": 0}'
call POST "/api/control/$CODE/filter" '{"trial_id": 3}'
call POST "/api/control/$CODE/filter" '{}'

step "Noise: a preset (light, moderate, intense, extreme), explicit parameters, then off"
call POST "/api/control/$CODE/noise" '{"noise": "moderate"}'
call POST "/api/control/$CODE/noise" '{"noise": {"noise_std": 0.8, "enable_drift": false, "seed": 7}}'
call POST "/api/control/$CODE/noise" '{"noise": null}'

step "Stop at the end of the recording instead of looping"
call POST "/api/control/$CODE/loop" '{"loop": false}'

step "Trials: all of them, those of target 0, and trial 3"
call GET /api/trials | sed -n '1,30p'
call GET /api/trials/by-target/0 | tail -n 6
call GET /api/trials/3

step "The dataset's stream metadata"
call GET /api/metadata | sed -n '1,12p'

step "Metrics: the original's JSON, then Prometheus text (Accept header or /metrics/prometheus)"
call GET /metrics | sed -n '1,40p'
echo "\$ curl -H 'Accept: text/plain' $BASE/metrics"
curl -sS "${AUTH[@]}" -H "Accept: text/plain" "$BASE/metrics" | sed -n '1,12p'
echo "\$ curl $BASE/metrics/prometheus | grep packets_sent"
curl -sS "${AUTH[@]}" "$BASE/metrics/prometheus" | grep packets_sent || true

step "Errors are JSON with a code: unknown session (404), wrong method (405), bad JSON (400)"
call GET /api/sessions/no-such-session
call PUT /api/sessions
call POST "/api/control/$CODE/seek" '{"packet_id": '

step "Delete the sessions, and remove every session idle for longer than the TTL"
call DELETE "/api/sessions/$CODE"
call DELETE /api/sessions/curl-options
call POST /api/sessions/cleanup

echo
echo "Done. The API reference: $BASE/docs (or docs/control.md); machine-readable: $BASE/openapi.json"
