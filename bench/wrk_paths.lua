-- wrk script: cycle through per-device files, as a room of phones would fetch them.
-- PREPROV_MACS phones, MACs 0080F0000000 upward, each with its Panasonic User-Agent.
local n = tonumber(os.getenv("PREPROV_MACS") or "1000")
local i = 0
request = function()
  i = (i + 1) % n
  local mac = string.format("0080F0%06X", i)
  return wrk.format("GET", "/Config" .. mac .. ".cfg",
    { ["User-Agent"] = "Panasonic_KX-HDV130/01.000 (" .. string.lower(mac) .. ")" })
end
