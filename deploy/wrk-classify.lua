-- wrk script: POST /classify with one image as multipart/form-data, for deploy/test-stack.sh's
-- load measurement. The image is $BLOODCELLS_BENCH_IMAGE; the mode is $BLOODCELLS_BENCH_MODE.
--   BLOODCELLS_BENCH_IMAGE=cell.jpeg wrk -t1 -c8 -d10s -s deploy/wrk-classify.lua http://127.0.0.1:8080
local path = os.getenv("BLOODCELLS_BENCH_IMAGE")
local mode = os.getenv("BLOODCELLS_BENCH_MODE") or "original"
local file = assert(io.open(path, "rb"), "cannot read BLOODCELLS_BENCH_IMAGE")
local image = file:read("*a")
file:close()

local boundary = "----bloodcells-wrk-boundary"
wrk.method = "POST"
wrk.path = "/classify?mode=" .. mode
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n"
    .. 'Content-Disposition: form-data; name="file"; filename="cell.jpeg"\r\n'
    .. "Content-Type: image/jpeg\r\n\r\n"
    .. image .. "\r\n--" .. boundary .. "--\r\n"

done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors=%d non200=%d rps=%.1f p50_ms=%.2f p99_ms=%.2f\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout, summary.errors.status,
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
