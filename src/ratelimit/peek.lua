-- Reads, without changing anything, what the decision script (limit.lua) would report for
-- each policy: remaining and reset_us. KEYS and ARGV as one group of limit.lua: per policy
-- its GCRA key then its ceiling key; per policy window_us, interval_us, burst, requests,
-- mode, slot_us.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local RING = 128
local floor, min, max = math.floor, math.min, math.max
local out = {}
for i = 1, #KEYS / 2 do
  local a = (i - 1) * 6
  local window, interval, burst = tonumber(ARGV[a+1]), tonumber(ARGV[a+2]), tonumber(ARGV[a+3])
  local requests, mode, slot = tonumber(ARGV[a+4]), tonumber(ARGV[a+5]), tonumber(ARGV[a+6])
  local gk, ck = KEYS[i*2-1], KEYS[i*2]
  local cnt, base = 0, nil
  if mode == 1 then
    cnt = redis.call('ZCOUNT', ck, '(' .. (now - window), '+inf')
  elseif mode == 2 then
    local h = redis.call('HMGET', ck, 'b', 't')
    base = tonumber(h[1])
    local first = floor((now - window) / slot)
    if base ~= nil and first - base <= 65 then
      cnt = tonumber(h[2]) or 0
      for k = base, first - 1 do
        cnt = cnt - (tonumber(redis.call('HGET', ck, k % RING) or '0'))
      end
      base = max(base, first)
    end
  end
  local remaining = requests - cnt
  local tat = now
  if interval > 0 then
    tat = max(tonumber(redis.call('GET', gk) or '0'), now)
    local tau = interval * (burst - 1)
    local burst_left = 0
    if tat - now <= tau then burst_left = floor((now + tau - tat) / interval) + 1 end
    remaining = burst_left
    if mode ~= 0 then remaining = min(burst_left, requests - cnt) end
  end
  if remaining < 0 then remaining = 0 end
  local reset = 0
  if mode == 0 then
    reset = min(tat - now, window)
  elseif mode == 1 then
    local oldest = redis.call('ZRANGEBYSCORE', ck, '(' .. (now - window), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if oldest[2] then reset = tonumber(oldest[2]) + window - now end
  elseif cnt > 0 and base then
    reset = (base + 1) * slot + window - now
  end
  if reset < 0 then reset = 0 end
  out[#out+1], out[#out+2] = remaining, reset
end
return out
