-- wrk: publishes spread over 1,000 channels (so over every shard of a Redis
-- Cluster), 32-byte messages, no subscribers.
-- wrk -t1 -c64 -d10s -s benches/shards.lua http://127.0.0.1:8000
math.randomseed(os.time())
request = function()
  local path = "/publish?channel=c" .. math.random(0, 999)
  return wrk.format("POST", path, { ["Content-Type"] = "text/plain" }, string.rep("x", 32))
end
