-- POST a login for one of BENCH_USERS users (bench-<i>@example.com / bench-password), round robin.
local n = tonumber(os.getenv("BENCH_USERS") or "50")
local i = 0
request = function()
  i = i + 1
  local body = '{"email":"bench-' .. (i % n) .. '@example.com","password":"bench-password"}'
  return wrk.format("POST", "/api/v1/auth/login", { ["Content-Type"] = "application/json" }, body)
end
