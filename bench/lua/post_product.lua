-- POST a new product with a unique slug and SKU on every request (wrk -t1).
local token = os.getenv("BENCH_TOKEN")
local run = tostring(os.time()) .. tostring(math.random(100000, 999999))
local n = 0
request = function()
  n = n + 1
  local id = run .. "-" .. n
  local body = '{"title":"Bench ' .. id .. '","slug":"bench-' .. id .. '","status":"active",' ..
    '"variants":[{"sku":"B-' .. id .. '","price":{"amount":1999,"currency":"usd"}}]}'
  return wrk.format("POST", "/api/v1/products",
    { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }, body)
end
