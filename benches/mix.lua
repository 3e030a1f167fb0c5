-- wrk: a subscribe/publish mix on 16 channels. One request in four publishes;
-- the rest read the channel's history (since=oldest answers at once).
-- wrk -t1 -c32 -d10s -s benches/mix.lua http://127.0.0.1:8000
local n = 0
request = function()
  n = n + 1
  local ch = "mix" .. (n % 16)
  if n % 4 == 0 then
    return wrk.format("POST", "/publish?channel=" .. ch, { ["Content-Type"] = "text/plain" }, string.rep("x", 32))
  end
  return wrk.format("GET", "/subscribe?channel=" .. ch .. "&since=oldest&format=json&timeout=0")
end
