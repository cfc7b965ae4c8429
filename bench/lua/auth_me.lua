-- GET /api/v1/auth/me with the bearer token of BENCH_TOKEN.
local token = os.getenv("BENCH_TOKEN")
request = function()
  return wrk.format("GET", "/api/v1/auth/me", { ["Authorization"] = "Bearer " .. token })
end
