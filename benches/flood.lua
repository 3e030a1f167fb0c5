-- wrk: 64,000-byte publishes spread over 300 channels (the memory bound's load).
-- wrk -t1 -c8 -d20s -s benches/flood.lua http://127.0.0.1:8000
local n = 0
local body = string.rep("x", 64000)
request = function()
  n = n + 1
  return wrk.format("POST", "/publish?channel=flood" .. (n % 300),
    { ["Content-Type"] = "text/plain" }, body)
end
