-- POST /api/v1/orders: one order of 1-2 random variants (BENCH_VARIANTS, comma separated) as
-- the customer BENCH_TOKEN, paid with tok_visa, each with an Idempotency-Key of its own
-- (BENCH_RUN, the wrk thread's number and a counter of that thread).
local ids = {}
for id in string.gmatch(os.getenv("BENCH_VARIANTS") or "", "[^,]+") do ids[#ids + 1] = id end
local run = os.getenv("BENCH_RUN") or "run"
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. (os.getenv("BENCH_TOKEN") or ""),
}
local addr = '"shipping_address":{"name":"Ada","line1":"1 Main St","city":"Springfield",' ..
  '"postal_code":"12345","country":"US"}'
local nthreads = 0
local n = 0

function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end

function init(args)
  math.randomseed(os.time() + (tid or 0) * 7919)
end

request = function()
  n = n + 1
  headers["Idempotency-Key"] = run .. "-" .. (tid or 0) .. "-" .. n
  local a = math.random(#ids)
  local items = '{"variant_id":"' .. ids[a] .. '","quantity":1}'
  if #ids > 1 and math.random(2) == 2 then
    local b = (a + math.random(#ids - 1) - 1) % #ids + 1 -- another variant than a
    items = items .. ',{"variant_id":"' .. ids[b] .. '","quantity":2}'
  end
  local body = '{"items":[' .. items .. '],"currency":"usd","payment_method_id":"tok_visa",' ..
    addr .. '}'
  return wrk.format("POST", "/api/v1/orders", headers, body)
end
