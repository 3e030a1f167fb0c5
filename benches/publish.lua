-- wrk: publish throughput with no subscribers. 32-byte messages, one channel.
-- wrk -t1 -c32 -d10s -s benches/publish.lua 'http://127.0.0.1:8000/publish?channel=w'
wrk.method = "POST"
wrk.body = string.rep("x", 32)
wrk.headers["Content-Type"] = "text/plain"
