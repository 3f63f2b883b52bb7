-- wrk script: POST one prebuilt body (a multipart/form-data upload) on every request, keep-alive.
-- The body and its content type come from the environment, so one script serves every case:
--   WRK_BODY=path/to/body.bin WRK_CONTENT_TYPE='multipart/form-data; boundary=...' wrk -s post.lua URL
-- At the end it prints one line, "WRK_JSON {...}", with the counts and latency percentiles (microseconds).

local body_path = os.getenv("WRK_BODY")
local content_type = os.getenv("WRK_CONTENT_TYPE")
assert(body_path and content_type, "set WRK_BODY and WRK_CONTENT_TYPE")
local file = assert(io.open(body_path, "rb"))
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = content_type
-- One request built once: wrk then writes the same bytes on every request of every connection.
local prebuilt = wrk.format()
request = function()
  return prebuilt
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, ' ..
    '"p50": %d, "p75": %d, "p90": %d, "p99": %d, "p99.9": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
