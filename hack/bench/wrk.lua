-- Requests and result line for the article server benchmarks of `make bench` (wrk).
-- BENCH_MODE: "get" (the URL's path), "slug" (BENCH_PREFIX .. a random one of BENCH_ARTICLES
-- seeded slugs, uniformly), "zipf" (the same, but the k-th article is picked with weight 1/k^s,
-- s = BENCH_ZIPF_S, default 1: a few articles get most reads, as on a real site),
-- "create" (POST a new draft, unique slug).
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
local cdf = nil
function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
  if mode == "zipf" then
    local s = tonumber(os.getenv("BENCH_ZIPF_S") or "1")
    cdf = {}
    local total = 0
    for k = 1, articles do
      total = total + 1 / (k ^ s)
      cdf[k] = total
    end
    for k = 1, articles do
      cdf[k] = cdf[k] / total
    end
  end
end

-- The rank whose cumulative weight first reaches u (binary search).
local function zipf()
  local u = math.random()
  local lo, hi = 1, articles
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function request()
  if mode == "slug" then
    return wrk.format("GET", prefix .. "article-" .. math.random(1, articles))
  elseif mode == "zipf" then
    return wrk.format("GET", prefix .. "article-" .. zipf())
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
