"""Cross-check of the HTTP transports with `wrk` (Debian's wrk 4.x), a load tool nobody here wrote.

SSE: every wrk request POSTs one streaming completion and reads it to its end, so wrk's requests/s is
completed generations/s and its latency is the time to the whole response. Polling: a Lua script keeps,
per wrk thread, a queue of running jobs; a connection that is free either long-polls the next running job
(`GET /v1/jobs/{id}?after=N&wait_ms=5000`) or, when none is waiting, creates one (`POST /v1/jobs`), so C
connections keep about C jobs going back to back, like our generator's C polling clients. A job counts
as completed when a poll reply says it is done; wrk's latency there is per HTTP request (POST or poll).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

_DONE = """
threads = {}
function setup(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  local jobs, chunks = 0, 0
  for _, t in ipairs(threads) do jobs = jobs + (t:get("jobs_done") or 0); chunks = chunks + (t:get("chunks") or 0) end
  io.write(string.format("SEEDANCE_WRK %d %d %d %d %d %d %d %f %f %f %f\\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write, summary.errors.status,
    summary.errors.timeout, summary.duration, jobs, chunks, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""

SSE_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = BODY
"""

POLLING_SCRIPT = """
local body = BODY
local queue, head, tail = {}, 1, 0
jobs_done, chunks = 0, 0
request = function()
  if head <= tail then
    local job = queue[head]
    queue[head] = nil
    head = head + 1
    return wrk.format("GET", "/v1/jobs/" .. job.id .. "?after=" .. job.after .. "&wait_ms=5000")
  end
  return wrk.format("POST", "/v1/jobs", {["Content-Type"] = "application/json"}, body)
end
response = function(status, headers, resp)
  local id = resp:match('"id":%s*"([^"]+)"')
  if id == nil then return end
  if status == 202 then
    tail = tail + 1
    queue[tail] = {id = id, after = -1}
  elseif status == 200 then
    local last_seq = tonumber(resp:match('"last_seq":%s*(-?%d+)'))
    if resp:match('"status":%s*"running"') then
      tail = tail + 1
      queue[tail] = {id = id, after = last_seq}
    else
      jobs_done = jobs_done + 1
      chunks = chunks + last_seq + 1
    end
  end
end
"""

PATHS = {"sse": "/v1/completions", "polling": "/v1/jobs"}


def _lua_string(text: str) -> str:
    if not text.isascii():
        raise ValueError("the wrk body must be ASCII (Lua string literals have no \\u escapes)")
    return json.dumps(text)  # for ASCII text a JSON string literal is a valid Lua string literal


def run_wrk(transport: str, url: str, clients: int, duration: float, body: dict, workdir: Path) -> dict | None:
    """None when wrk is not installed; a dict with an error when it failed; else its figures."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    if transport not in PATHS:
        raise ValueError(f"wrk cross-check covers {', '.join(PATHS)}, not {transport!r}")
    if transport == "sse":
        body = {"model": "seedance-tiny", "stream": True, **body}
    template = SSE_SCRIPT if transport == "sse" else POLLING_SCRIPT
    script = workdir / f"{transport}.lua"
    script.write_text(template.replace("BODY", _lua_string(json.dumps(body))) + _DONE)
    cmd = [wrk, "-t", "1", "-c", str(clients), "-d", f"{duration:g}s", "--timeout", "30s", "-s", str(script),
           f"{url}{PATHS[transport]}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"SEEDANCE_WRK" + r" (\d+)" * 7 + r" ([\d.]+)" * 4, proc.stdout)
    if not m:
        return {"error": (proc.stdout + proc.stderr)[-1000:], "command": " ".join(cmd)}
    reqs, sock_err, status_err, timeouts, dur_us, jobs, chunks = (int(m.group(i)) for i in range(1, 8))
    p = [float(m.group(i)) / 1000.0 for i in range(8, 12)]  # microseconds → ms
    seconds = dur_us / 1e6
    completed = reqs if transport == "sse" else jobs
    return {
        "tool": subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip(),
        "command": " ".join(cmd),
        "transport": transport,
        "clients": clients,
        "http_requests": reqs,
        "http_requests_per_s": reqs / seconds,
        "completed": completed,
        "requests_per_s": completed / seconds,  # completed generations/s, comparable with our generator's
        "chunks_per_s": chunks / seconds if transport == "polling" else None,
        "socket_errors": sock_err,
        "status_errors": status_err,
        "timeouts": timeouts,
        "latency_ms": {"p50": p[0], "p90": p[1], "p99": p[2], "p99.9": p[3]},
        "latency_is": "time to the whole streamed response" if transport == "sse"
        else "per HTTP request (job creation or one long poll)",
    }
