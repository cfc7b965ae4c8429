-- POST /api/v1/auth/validate-token with the token of BENCH_TOKEN.
local token = os.getenv("BENCH_TOKEN")
local body = '{"token":"' .. token .. '"}'
request = function()
  return wrk.format("POST", "/api/v1/auth/validate-token", { ["Content-Type"] = "application/json" }, body)
end
