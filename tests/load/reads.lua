-- The read load of tests/full_load.rs (wrk, keep-alive): every request a GET of one of the
-- site's pages or API answers, in turn; every answer counted by status, so that a test can
-- say which status each failure had (wrk itself only counts "non-2xx/3xx").
-- LOAD_SLUG: a published article.
local slug = os.getenv("LOAD_SLUG") or "front-page"
local paths = {
  "/articles/" .. slug,
  "/api/v1/articles/" .. slug,
  "/",
  "/api/v1/articles",
  "/feed.xml",
}

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("offset", #threads)
end

local n = 0
statuses = {}
-- The server's own time (its Server-Timing header): answers it took at least SLOW_MS
-- for, and its longest. wrk counts a read that took 2 s or more as a timeout, and cannot
-- say where the time went; beside these two figures it can (the server, or the network
-- and the queues before it).
local SLOW_MS = tonumber(os.getenv("LOAD_SLOW_MS") or "2000")
server_slow = 0
server_max_ms = 0

function request()
  n = n + 1
  return wrk.format("GET", paths[(n + (offset or 0)) % #paths + 1])
end

-- A problem answer (and the HTML page of one) names what failed
-- (`urn:articles:problem:overloaded`, ...): kept with the status, so that a failure says
-- which part of the server answered it.
function response(status, headers, body)
  local timing = headers["server-timing"] or headers["Server-Timing"]
  local ms = timing and tonumber(timing:match("dur=([%d%.]+)"))
  if ms then
    if ms >= SLOW_MS then server_slow = server_slow + 1 end
    if ms > server_max_ms then server_max_ms = ms end
  end
  local k = tostring(status)
  if status >= 300 and body then
    local kind = body:match("urn:articles:problem:([%w%-]+)")
    if kind then k = k .. " " .. kind end
  end
  statuses[k] = (statuses[k] or 0) + 1
end

-- One machine-readable line; latencies in microseconds.
function done(summary, latency, requests)
  local all, slow, slowest = {}, 0, 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do all[k] = (all[k] or 0) + v end
    slow = slow + t:get("server_slow")
    slowest = math.max(slowest, t:get("server_max_ms"))
  end
  local parts = {}
  for k, v in pairs(all) do table.insert(parts, string.format('"%s":%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'LOAD_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"statuses":{%s},"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"server_slow":%d,"server_max_us":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, table.concat(parts, ","), e.connect, e.read, e.write, e.timeout,
    slow, math.floor(slowest * 1000)))
end
