-- A batch of decisions, made one after another on one reading of the server's clock.
-- ARGV[1]: the number of groups. Then per group: its number of decisions (all on the same
-- keys and policies), its number of policies n, and per policy: window_us, interval_us,
-- burst, requests, mode, slot_us.
-- KEYS: per group, per policy, its GCRA key then its ceiling key; last, the sequence key.
-- mode 0: GCRA alone (burst = 1); 1: exact log in a sorted set; 2: counts per slot in a
-- hash (fields: slot index mod 128, 'b' = oldest kept slot, 't' = total). interval_us 0:
-- no GCRA (burst = requests), the ceiling alone decides.
-- GCRA times and slot counts are read once per key and batch and written back at its end,
-- so further decisions on a key in the same batch cost no commands.
-- Returns per decision: denied (index of the refusing policy, 0 if admitted), the wait in
-- us, then per policy: remaining, reset_us.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local RING = 128
local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min
local out, no = {}, 0
local tats = {}   -- GCRA key -> { tat, ttl, dirty }
local hashes = {} -- slot-count key -> { base, total, add (to slot cur), cur, ttl }
local cnts = {}   -- per policy of the decision at hand: its log's count
-- The group's policies, parsed once.
local WIN, INT, BUR, REQ, MODE, SLOT = {}, {}, {}, {}, {}, {}

local function gcra(k)
  local e = tats[k]
  if e == nil then
    e = { tat = tonumber(redis.call('GET', k) or '0'), ttl = 0, dirty = false }
    tats[k] = e
  end
  return e
end

-- A slot-count hash, its slots wholly before the window dropped.
local function counted(ck, window, slot)
  local e = hashes[ck]
  if e then return e end
  local first = floor((now - window) / slot)
  local h = redis.call('HMGET', ck, 'b', 't')
  local base, total = tonumber(h[1]), tonumber(h[2]) or 0
  if base == nil then
    base = first
  elseif first - base > 65 then
    -- Every kept slot is older than the window.
    redis.call('DEL', ck)
    base, total = first, 0
  elseif base < first then
    while base < first do
      local c = tonumber(redis.call('HGET', ck, base % RING) or '0')
      if c > 0 then
        total = total - c
        redis.call('HDEL', ck, base % RING)
      end
      base = base + 1
    end
    if total > 0 then
      redis.call('HSET', ck, 'b', base, 't', total)
    else
      redis.call('DEL', ck)
    end
  end
  e = { base = base, total = total, add = 0, cur = floor(now / slot), ttl = 0 }
  hashes[ck] = e
  return e
end

local ai, ki = 2, 0
for _ = 1, tonumber(ARGV[1]) do
  local count, n = tonumber(ARGV[ai]), tonumber(ARGV[ai+1])
  ai = ai + 2
  for i = 1, n do
    local a = ai + (i - 1) * 6
    WIN[i], INT[i], BUR[i] = tonumber(ARGV[a]), tonumber(ARGV[a+1]), tonumber(ARGV[a+2])
    REQ[i], MODE[i], SLOT[i] = tonumber(ARGV[a+3]), tonumber(ARGV[a+4]), tonumber(ARGV[a+5])
  end
  for _ = 1, count do
    local denied, maxwait, logged = 0, 0, false
    for i = 1, n do
      local window, interval, burst = WIN[i], INT[i], BUR[i]
      local requests, mode, slot = REQ[i], MODE[i], SLOT[i]
      local ck = KEYS[ki+i*2]
      local gw, lw = 0, 0
      if interval > 0 then
        gw = max(gcra(KEYS[ki+i*2-1]).tat, now) - now - interval * (burst - 1)
      end
      if mode == 1 then
        logged = true
        redis.call('ZREMRANGEBYSCORE', ck, '-inf', now - window)
        local cnt = redis.call('ZCARD', ck)
        if cnt >= requests then
          local e = redis.call('ZRANGE', ck, cnt - requests, cnt - requests, 'WITHSCORES')
          lw = tonumber(e[2]) + window - now
        end
        cnts[i] = cnt
      elseif mode == 2 then
        local e = counted(ck, window, slot)
        if e.total >= requests then
          -- Drop the oldest slots until fewer than requests remain counted.
          local left, k = e.total, e.base
          while left >= requests and k <= e.cur do
            local c = tonumber(redis.call('HGET', ck, k % RING) or '0')
            if k == e.cur then c = c + e.add end
            left = left - c
            k = k + 1
          end
          lw = k * slot + window - now
        end
      end
      local w = max(gw, lw, 0)
      if w > maxwait then maxwait = w; denied = i end
    end
    out[no+1], out[no+2] = denied, maxwait
    no = no + 2
    local seq = 0
    if denied == 0 and logged then
      seq = redis.call('INCR', KEYS[#KEYS])
      if seq == 1 then redis.call('PEXPIRE', KEYS[#KEYS], 60000) end
    end
    for i = 1, n do
      local window, interval, burst = WIN[i], INT[i], BUR[i]
      local requests, mode, slot = REQ[i], MODE[i], SLOT[i]
      local ck = KEYS[ki+i*2]
      local ttl = ceil(window / 1000) + 1000
      local g, tat = nil, now
      if interval > 0 then
        g = gcra(KEYS[ki+i*2-1])
        tat = max(g.tat, now)
      end
      local cnt = 0
      if mode == 1 then
        cnt = cnts[i]
      elseif mode == 2 then
        cnt = hashes[ck].total
      end
      if denied == 0 then
        if g then
          tat = tat + interval
          g.tat, g.dirty, g.ttl = tat, true, max(g.ttl, ttl)
        end
        if mode == 1 then
          cnt = cnt + 1
          redis.call('ZADD', ck, now, now .. ':' .. seq)
          if cnt > requests then redis.call('ZREMRANGEBYRANK', ck, 0, -(requests + 1)) end
          redis.call('PEXPIRE', ck, ttl)
        elseif mode == 2 then
          local e = hashes[ck]
          cnt = cnt + 1
          e.total, e.add = cnt, e.add + 1
          -- A slot's first admission sets the TTL: the hash outlives its last admission by
          -- a window, as that came at most one slot later.
          e.ttl = max(e.ttl, ceil((window + slot) / 1000) + 1000)
        end
      end
      local remaining = requests - cnt
      if g then
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
        local oldest = redis.call('ZRANGE', ck, 0, 0, 'WITHSCORES')
        if oldest[2] then reset = tonumber(oldest[2]) + window - now end
      elseif cnt > 0 then
        -- The oldest kept slot's end: at most one slot early if that slot is empty.
        reset = (hashes[ck].base + 1) * slot + window - now
      end
      if reset < 0 then reset = 0 end
      out[no+1], out[no+2] = remaining, reset
      no = no + 2
    end
  end
  ai = ai + n * 6
  ki = ki + n * 2
end
-- Write back what the batch changed.
for k, e in pairs(tats) do
  if e.dirty then redis.call('SET', k, e.tat, 'PX', e.ttl) end
end
for ck, e in pairs(hashes) do
  if e.add > 0 then
    if redis.call('HINCRBY', ck, e.cur % RING, e.add) == e.add then
      redis.call('PEXPIRE', ck, e.ttl)
    end
    redis.call('HSET', ck, 'b', e.base, 't', e.total)
  end
end
return out
