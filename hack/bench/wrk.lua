-- Requests and result line for the article server benchmarks of `make bench` (wrk).
-- BENCH_MODE: "get" (the URL's path), "slug" (BENCH_PREFIX .. a random one of BENCH_ARTICLES
-- seeded slugs, so the cache sees a realistic spread), "create" (POST a new draft, unique slug).
local mode = os.getenv("BENCH_MODE") or "get"
local prefix = os.getenv("BENCH_PREFIX") or "/api/v1/articles/"
local articles = tonumber(os.getenv("BENCH_ARTICLES") or "10000")
local token = os.getenv("BENCH_TOKEN") or ""
local run = os.getenv("BENCH_RUN") or "0"

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter = 0
function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
end

function request()
  if mode == "slug" then
    return wrk.format("GET", prefix .. "article-" .. math.random(1, articles))
  elseif mode == "create" then
    counter = counter + 1
    local slug = "bench-" .. run .. "-" .. (tid or 0) .. "-" .. counter
    local body = '{"slug":"' .. slug .. '","title":"Benchmark ' .. slug ..
      '","body":"# Benchmark\\n\\nAn article written by **make bench**.","tags":["bench"]}'
    return wrk.format("POST", "/api/v1/articles", {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. token,
    }, body)
  end
  return wrk.format("GET")
end

-- One machine-readable line; latencies in microseconds. Status >= 400 counts as an error.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"errors_status":%d,"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.status, e.connect, e.read, e.write, e.timeout))
end
