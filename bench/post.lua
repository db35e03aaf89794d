-- wrk script: POST OCSP requests like mod_ssl, rotating over K request bodies.
--   wrk -t2 -c32 -d10s --latency -H "Connection: close" -s bench/post.lua URL -- DIR K
-- DIR holds 1.der .. K.der. With "Connection: close" the server closes after each response and wrk
-- opens a new connection for the next request (bench/loadtest.py checks that it really does).
-- done() prints one line "WRK_JSON {...}" with the exact counts and percentiles (microseconds).

local requests = {}
local count = 0
local next_index = 1

function init(args)
   local dir, k = args[1], tonumber(args[2])
   local headers = {}
   for name, value in pairs(wrk.headers) do
      headers[name] = value
   end
   headers["Content-Type"] = "application/ocsp-request"
   for i = 1, k do
      local f = assert(io.open(dir .. "/" .. i .. ".der", "rb"))
      local body = f:read("*a")
      f:close()
      requests[i] = wrk.format("POST", "/", headers, body)
   end
   count = k
   -- threads start at different places in the rotation
   next_index = (math.random(1, k) - 1) % k + 1
end

function request()
   local r = requests[next_index]
   next_index = next_index % count + 1
   return r
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, '
         .. '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, '
         .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
      e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
