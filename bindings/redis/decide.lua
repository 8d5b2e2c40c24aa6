-- fastguard strict-mode decisions: one atomic call decides every limit of each given key, in order, exactly as
-- fastguard._pure.Table does (that package is the definition; this is a transcription of it).
--
-- KEYS     the keys' states
-- ARGV     1 algorithm f|s|b|g (fixed_window, sliding_window, token_bucket, gcra)
--          2, 3 now as whole seconds and nanoseconds, or "", "" for this server's clock (TIME): one clock for all
--          4 "1" to record the hits, "0" to peek
--          5 TTL of a state in ms (longer than any state takes to become fresh, so expiry loses nothing)
--          6 "fast" or "exact" (which arithmetic, chosen by the client from the limits; see below), then optionally
--            ":ban_after:window_ms:ban_for_ms:limit"
--          7 n, the number of limits
--          8, 9, 10 fast: the struct formats of a state and of the constants, the packed constants (13 per limit,
--            see below); exact: "", "", "", then for each limit: count C, period P (ns), T = ceil(P / C),
--            L = C * T, as decimals
--          then one cost per key (decimal, capped by the client at the largest count + 1: the same answer)
-- Returns  for each key: allowed 0|1, index of the reported limit (1-based), reset_after ns,
--          retry_after ns ("-1" = never), then the remaining of every limit; or, for a banned key, 2 (3 when
--          this very call started the ban), the ban's limit, the ms left of the ban twice, then zeros.
--          Durations past 2^53 ns come as decimal strings.
--
-- Two transcriptions of the same rules. "fast": every period is whole milliseconds, at most 366 days, and every
-- count at most 10^9 (fastguard.redis.strict.fast_arithmetic): plain Lua numbers (doubles, exact below 2^53) with
-- the wide quantities (count x ns, up to ~2^85) in three limbs of base 10^6, which keeps every partial product
-- below 2^53. "exact": anything else, in variable-length bignums (slower; correct for every limit the core
-- accepts). A state is written by one of the two only: the path follows from the limits, and so does the key's
-- namespace.

local code = ARGV[1]
local commit = ARGV[4] == "1"
local ttl = ARGV[5]
local nlim = tonumber(ARGV[7])
-- Bans: ARGV[6] may carry ":ban_after:window_ms:ban_for_ms:limit" after the path. A ban is the key `<key>~ban`
-- (same hash tag: same slot) living ban_for ms; denials count in `<key>~deny`, living window_ms from the first.
local path, ban_after, ban_window, ban_for, ban_limit = ARGV[6], 0, 0, 0, 1
do
  local p, a, w, f, l = string.match(ARGV[6], "^(%a+):(%d+):(%d+):(%d+):(%d+)$")
  if p then path, ban_after, ban_window, ban_for, ban_limit = p, tonumber(a), tonumber(w), tonumber(f), tonumber(l) end
end
local function ban_left(key)  -- ms left of the key's ban, 0 when none (or lifted by an operator: "lifted")
  -- checked whatever ban_after says: an operator's ban (`fastguard bans ban`) reaches every limiter of the key
  local left = redis.call("PTTL", key .. "~ban")
  if left > 0 and redis.call("GET", key .. "~ban") == "lifted" then return 0 end
  return left > 0 and left or 0
end
local function count_denial(key)  -- true when this denial starts a ban
  if ban_after == 0 then return false end
  local dk = key .. "~deny"
  local n = redis.call("INCR", dk)
  if n == 1 then redis.call("PEXPIRE", dk, ban_window) end
  if n < ban_after then return false end
  redis.call("SET", key .. "~ban", "auto", "PX", ban_for)  -- "auto": started by ban_after ("manual": ban())
  redis.call("DEL", dk)
  return true
end
-- The reply of a banned key: code 2 (3 when this call started the ban), the ban's limit, ms left twice, zeros.
local function banned_reply(reply, at, left, started)
  reply[at + 1] = started and 3 or 2
  reply[at + 2] = ban_limit
  reply[at + 3] = left
  reply[at + 4] = left
  for i = 1, nlim do reply[at + 4 + i] = 0 end
  return at + 4 + nlim
end
local now_s, now_n
if ARGV[2] == "" then
  local t = redis.call("TIME")
  now_s, now_n = tonumber(t[1]), tonumber(t[2]) * 1000
else
  now_s, now_n = tonumber(ARGV[2]), tonumber(ARGV[3])
end
local reply = {}

if path == "fast" then
  -- Wide integers are three limbs (x2, x1, x0) = x2 * 10^12 + x1 * 10^6 + x0, with x1, x0 in [0, 10^6) and x2 a
  -- whole double. A time or a duration in ns is such a number whose ms are x2 * 10^6 + x1 and whose sub-ms ns
  -- are x0. Every helper below keeps its partial results below 2^53 for the ranges of the fast path: counts and
  -- costs below 2^31, durations below 2^56, products below 2^86.
  -- Integers a >= 0, b > 0 with a + b < 2^53: a / b never rounds up to the next integer (it is at least 1/b below
  -- it, more than half a unit in the last place), so a % b (Lua: a - floor(a / b) * b) and (a - a % b) / b are
  -- exact.
  -- wide integers: begin (tests/differential/test_redis_strict.py runs this block against Python's integers)
  local M = 1000000
  local function limbs(x)  -- x < 2^53
    local x0 = x % M
    x = (x - x0) / M
    local x1 = x % M
    return (x - x1) / M, x1, x0
  end
  local function mul(c, x2, x1, x0)  -- c * x, c < 2^31
    local t = c * x0
    local r0 = t % M
    t = c * x1 + (t - r0) / M
    local r1 = t % M
    return c * x2 + (t - r1) / M, r1, r0
  end
  local function add(a2, a1, a0, b2, b1, b0)
    local r2, r1, r0 = a2 + b2, a1 + b1, a0 + b0
    if r0 >= M then r0 = r0 - M; r1 = r1 + 1 end
    if r1 >= M then r1 = r1 - M; r2 = r2 + 1 end
    return r2, r1, r0
  end
  local function sub(a2, a1, a0, b2, b1, b0)  -- a >= b
    local r2, r1, r0 = a2 - b2, a1 - b1, a0 - b0
    if r0 < 0 then r0 = r0 + M; r1 = r1 - 1 end
    if r1 < 0 then r1 = r1 + M; r2 = r2 - 1 end
    return r2, r1, r0
  end
  local function le(a2, a1, a0, b2, b1, b0)
    if a2 ~= b2 then return a2 < b2 end
    if a1 ~= b1 then return a1 < b1 end
    return a0 <= b0
  end
  local function divmod(x2, x1, x0, d)  -- floor(x / d) as limbs and x mod d, for 0 < d < 2^31 (long division)
    local r = x2 % d
    local q2 = (x2 - r) / d
    local t = r * M + x1
    r = t % d
    local q1 = (t - r) / d
    t = r * M + x0
    r = t % d
    return q2, q1, (t - r) / d, r
  end
  local function ceil_div(x2, x1, x0, d)  -- ceil(x / d) as limbs, 0 < d < 2^31
    local q2, q1, q0, r = divmod(x2, x1, x0, d)
    if r > 0 then return add(q2, q1, q0, 0, 0, 1) end
    return q2, q1, q0
  end
  -- floor(x / d) for a wide d > 0 when the quotient is below 2^31 (a count): estimated in doubles (relative error
  -- below 2^-49, so off by at most one) and corrected with exact products.
  local function quot(x2, x1, x0, d2, d1, d0)
    local q = math.floor(((x2 * M + x1) * M + x0) / ((d2 * M + d1) * M + d0))
    local p2, p1, p0 = mul(q, d2, d1, d0)
    if not le(p2, p1, p0, x2, x1, x0) then return q - 1 end
    p2, p1, p0 = add(p2, p1, p0, d2, d1, d0)
    if le(p2, p1, p0, x2, x1, x0) then return q + 1 end
    return q
  end
  local function ns(x2, x1, x0)  -- a wide value as a reply: a number below 2^53, decimal digits above
    if x2 < 9007 then return (x2 * M + x1) * M + x0 end
    return string.format("%d%06d%06d", x2, x1, x0)
  end
  local function ms_limbs(ms, sub_ms)  -- (ms, sub-ms ns) -> limbs; ms < 2^53
    local x1 = ms % M
    return (ms - x1) / M, x1, sub_ms
  end
  -- wide integers: end

  -- ARGV[8]: the struct format of a state (little-endian doubles: exact for integers below 2^53); ARGV[9],
  -- ARGV[10]: the format and the packed constants, 13 per limit: C, P in ms, P as limbs (P2, P1; P0 is 0),
  -- T = ceil(P / C) and L = C * T as limbs, C * P as limbs; the costs from ARGV[11].
  -- A state: touched (ms, sub-ms ns), then per limit: fixed window (index, count), sliding window (index, cur,
  -- prev), token bucket (full_at ms, full_at sub-ms ns, frac), GCRA (tat ms, tat sub-ms ns).
  local fmt = ARGV[8]
  local K = {struct.unpack(ARGV[9], ARGV[10])}
  local NK = 13
  local now_ms, now_sub = now_s * 1000 + (now_n - now_n % M) / M, now_n % M
  local nw = (code == "s" or code == "b") and 3 or 2  -- words per limit
  local ok, rem, resets = {}, {}, {}
  -- per limit, between the passes: the rolled words (fixed/sliding: index, cur, prev), P - e as (ms, sub-ms ns)
  -- (fixed/sliding), or the deficit (bucket) / d = max(0, tat - now) (GCRA) as limbs
  local SA, SB, SC, UM, US = {}, {}, {}, {}, {}
  local W2, W1, W0 = {}, {}, {}  -- sliding window: prev * (P - e) as limbs
  local nreply = 0
  -- Every state in one call; `written` holds what this call stored, for a key that comes again in the batch.
  local states = redis.call("MGET", unpack(KEYS))
  local written = {}
  for x = 1, #KEYS do repeat
    local key = KEYS[x]
    local k = tonumber(ARGV[10 + x])
    local tm, ts = now_ms, now_sub
    local left = ban_left(key)
    if left > 0 then
      nreply = banned_reply(reply, nreply, left, false)
      break  -- the next key (repeat ... until true: Lua 5.1 has no continue)
    end
    local stored = written[key]
    if stored == nil then stored = states[x] end
    local v = nil
    if stored then
      v = {struct.unpack(fmt, stored)}
      -- time went backwards for this key: decide as if no time had passed
      if v[1] > tm or (v[1] == tm and v[2] > ts) then tm, ts = v[1], v[2] end
    end
    local n2, n1, n0 = ms_limbs(tm, ts)  -- now
    local allowed = true
    for i = 1, nlim do
      local at = NK * (i - 1)
      local Ci, Pm, P2, P1 = K[at + 1], K[at + 2], K[at + 3], K[at + 4]
      local base = 2 + (i - 1) * nw
      if code == "f" or code == "s" then
        -- window index q and offset e = now - q * P (whole ms em, then the sub-ms ns); P - e as (ms, ns)
        local em = tm % Pm
        local q = (tm - em) / Pm
        if ts > 0 then UM[i], US[i] = Pm - em - 1, M - ts else UM[i], US[i] = Pm - em, 0 end
        local b, c = 0, 0
        if code == "f" then
          if v and v[base + 1] == q then b = v[base + 2] end
          ok[i] = b + k <= Ci
        else
          if v then
            if v[base + 1] == q then b, c = v[base + 2], v[base + 3]
            elseif v[base + 1] + 1 == q then c = v[base + 2] end
          end
          -- cur + k <= C and prev * (P - e) <= (C - cur - k) * P
          local fits = b + k <= Ci
          if c > 0 then  -- prev * (P - e), kept for the remaining
            local w2, w1, w0 = mul(c, ms_limbs(UM[i], US[i]))
            W2[i], W1[i], W0[i] = w2, w1, w0
            fits = fits and le(w2, w1, w0, mul(Ci - b - k, P2, P1, 0))
          end
          ok[i] = fits
        end
        SA[i], SB[i], SC[i] = q, b, c
      elseif code == "b" then
        -- deficit D = max(0, (full_at - now) * C + frac); full_at - now <= P
        local d2, d1, d0 = 0, 0, 0
        if v then
          local fm, fs = v[base + 1], v[base + 2]
          if fm > tm or (fm == tm and fs >= ts) then
            local dm, ds = fm - tm, fs - ts
            if ds < 0 then dm, ds = dm - 1, ds + M end
            d2, d1, d0 = mul(Ci, ms_limbs(dm, ds))
            d2, d1, d0 = add(d2, d1, d0, limbs(v[base + 3]))
          end
        end
        SA[i], SB[i], SC[i] = d2, d1, d0
        ok[i] = k <= Ci and le(d2, d1, d0, mul(Ci - k, P2, P1, 0))
      else
        -- d = max(0, tat - now); admitted when d + k * T <= L
        local d2, d1, d0 = 0, 0, 0
        if v then
          local am, as = v[base + 1], v[base + 2]
          if am > tm or (am == tm and as > ts) then
            local dm, ds = am - tm, as - ts
            if ds < 0 then dm, ds = dm - 1, ds + M end
            d2, d1, d0 = ms_limbs(dm, ds)
          end
        end
        SA[i], SB[i], SC[i] = d2, d1, d0
        local y2, y1, y0 = add(d2, d1, d0, mul(k, K[at + 5], K[at + 6], K[at + 7]))
        ok[i] = le(y2, y1, y0, K[at + 8], K[at + 9], K[at + 10])
      end
      if not ok[i] then allowed = false end
    end
    -- consume; the remaining and reset_after of each limit on the words after the hit
    local out = {tm, ts}
    local best = 1
    local take = allowed and commit
    for i = 1, nlim do
      local at = NK * (i - 1)
      local Ci, Pm, P2, P1 = K[at + 1], K[at + 2], K[at + 3], K[at + 4]
      if code == "f" then
        local b = SB[i]
        if take then b = b + k end
        rem[i] = Ci - b
        resets[i] = (b > 0) and ns(ms_limbs(UM[i], US[i])) or 0
        out[#out + 1] = SA[i]; out[#out + 1] = b
      elseif code == "s" then
        local b, c = SB[i], SC[i]
        if take then b = b + k end
        if c == 0 then
          rem[i] = Ci - b  -- floor((C - cur) * P / P), cur <= C
        else
          -- floor(((C - cur) * P - prev * (P - e)) / P), or 0
          local a2, a1, a0 = mul(Ci - b, P2, P1, 0)
          local w2, w1, w0 = W2[i], W1[i], W0[i]
          if le(a2, a1, a0, w2, w1, w0) then rem[i] = 0
          else
            a2, a1, a0 = sub(a2, a1, a0, w2, w1, w0)
            rem[i] = quot(a2, a1, a0, P2, P1, 0)
          end
        end
        if b > 0 then resets[i] = ns(ms_limbs(Pm + UM[i], US[i]))  -- 2P - e
        elseif c > 0 then resets[i] = ns(ms_limbs(UM[i], US[i]))   -- P - e
        else resets[i] = 0 end
        out[#out + 1] = SA[i]; out[#out + 1] = b; out[#out + 1] = c
      elseif code == "b" then
        local d2, d1, d0 = SA[i], SB[i], SC[i]
        if take then
          d2, d1, d0 = add(d2, d1, d0, mul(k, P2, P1, 0))
          -- full_at = now + floor(d / C), frac = d mod C
          local q2, q1, q0, frac = divmod(d2, d1, d0, Ci)
          local f2, f1, f0 = add(n2, n1, n0, q2, q1, q0)
          out[#out + 1] = f2 * M + f1; out[#out + 1] = f0; out[#out + 1] = frac
        end
        local r2, r1, r0 = sub(K[at + 11], K[at + 12], K[at + 13], d2, d1, d0)
        rem[i] = quot(r2, r1, r0, P2, P1, 0)
        resets[i] = ns(ceil_div(d2, d1, d0, Ci))
      else
        local d2, d1, d0 = SA[i], SB[i], SC[i]
        if take then
          d2, d1, d0 = add(d2, d1, d0, mul(k, K[at + 5], K[at + 6], K[at + 7]))
          local t2, t1, t0 = add(n2, n1, n0, d2, d1, d0)  -- tat = now + d + k * T
          out[#out + 1] = t2 * M + t1; out[#out + 1] = t0
        end
        local r2, r1, r0 = sub(K[at + 8], K[at + 9], K[at + 10], d2, d1, d0)
        rem[i] = quot(r2, r1, r0, K[at + 5], K[at + 6], K[at + 7])
        resets[i] = ns(d2, d1, d0)
      end
      if i > 1 and (rem[i] < rem[best] or (rem[i] == rem[best] and Pm > K[NK * (best - 1) + 2])) then best = i end
    end
    local retry = 0
    if not allowed then
      local y2, y1, y0 = 0, 0, 0  -- the longest wait, as limbs
      for i = 1, nlim do
        if not ok[i] then
          local at = NK * (i - 1)
          local Ci, Pm, P2, P1 = K[at + 1], K[at + 2], K[at + 3], K[at + 4]
          if k > Ci then
            retry = -1
            break
          end
          local r2, r1, r0
          if code == "f" then
            r2, r1, r0 = ms_limbs(UM[i], US[i])  -- P - e
          elseif code == "s" then
            local b, c = SB[i], SC[i]
            local u2, u1, u0 = ms_limbs(UM[i], US[i])
            if b + k <= Ci then
              -- later in this window: (P - e) - floor((C - cur - k) * P / prev); prev > 0 (the hit was refused)
              local q2, q1, q0 = mul(Ci - b - k, P2, P1, 0)
              q2, q1, q0 = divmod(q2, q1, q0, c)
              r2, r1, r0 = sub(u2, u1, u0, q2, q1, q0)
            else
              -- in the next window: (P - e) + P - floor((C - k) * P / cur), the quotient below P (cur > C - k)
              local q2, q1, q0 = mul(Ci - k, P2, P1, 0)
              q2, q1, q0 = divmod(q2, q1, q0, b)
              r2, r1, r0 = add(u2, u1, u0, sub(P2, P1, 0, q2, q1, q0))
            end
          elseif code == "b" then
            -- ceil((D - (C - k) * P) / C), D above (C - k) * P (the hit was refused)
            local e2, e1, e0 = mul(Ci - k, P2, P1, 0)
            e2, e1, e0 = sub(SA[i], SB[i], SC[i], e2, e1, e0)
            r2, r1, r0 = ceil_div(e2, e1, e0, Ci)
          else
            -- d + k * T - L
            local w2, w1, w0 = add(SA[i], SB[i], SC[i], mul(k, K[at + 5], K[at + 6], K[at + 7]))
            r2, r1, r0 = sub(w2, w1, w0, K[at + 8], K[at + 9], K[at + 10])
          end
          if not le(r2, r1, r0, y2, y1, y0) then y2, y1, y0 = r2, r1, r0 end
        end
      end
      if retry == 0 then retry = ns(y2, y1, y0) end
    end
    -- A denied newcomer leaves nothing behind; a denied known key only moves its touched time.
    if commit and (stored or allowed) then
      if not allowed then
        out = v
        out[#out] = nil  -- unpack's trailing position
        out[1] = tm
        out[2] = ts
      end
      local packed = struct.pack(fmt, unpack(out))
      redis.call("SET", key, packed, "PX", ttl)
      written[key] = packed
    end
    if commit and not allowed and count_denial(key) then
      nreply = banned_reply(reply, nreply, ban_for, true)
      break
    end
    reply[nreply + 1] = allowed and 1 or 0
    reply[nreply + 2] = best
    reply[nreply + 3] = resets[best]
    reply[nreply + 4] = retry
    for i = 1, nlim do reply[nreply + 4 + i] = rem[i] end
    nreply = nreply + 4 + nlim
  until true end
  return reply
end

do  -- "exact"
  local BASE = 10000000
  local EXACT = 9007199254740992  -- 2^53

  local function norm(t)  -- a limb array without leading zeros -> a number when below 2^53
    local n = #t
    while n > 0 and t[n] == 0 do t[n] = nil; n = n - 1 end
    if n <= 2 then return (t[2] or 0) * BASE + (t[1] or 0) end
    if n == 3 and t[3] <= 90 then
      local v = (t[3] * BASE + t[2]) * BASE + t[1]  -- exact when below 2^53, and at or above it when not
      if v < EXACT then return v end
    end
    return t
  end

  local function limbs(x)  -- any value as a limb array (numbers split exactly: each step divides by 10^7)
    if type(x) == "table" then return x end
    local t = {}
    while x > 0 do
      local r = math.fmod(x, BASE)
      t[#t + 1] = r
      x = (x - r) / BASE
    end
    return t
  end

  local function big(s)
    if #s <= 15 then return tonumber(s) end
    local t, i = {}, #s
    while i > 0 do
      local j = i - 6
      if j < 1 then j = 1 end
      t[#t + 1] = tonumber(string.sub(s, j, i))
      i = j - 1
    end
    return norm(t)
  end

  local function str(a)
    if type(a) == "number" then return string.format("%.0f", a) end
    local n = #a
    local parts = {string.format("%d", a[n])}
    for i = n - 1, 1, -1 do parts[#parts + 1] = string.format("%07d", a[i]) end
    return table.concat(parts)
  end

  local function lcmp(a, b)  -- limb arrays without leading zeros
    local na, nb = #a, #b
    if na ~= nb then return na < nb and -1 or 1 end
    for i = na, 1, -1 do
      if a[i] ~= b[i] then return a[i] < b[i] and -1 or 1 end
    end
    return 0
  end

  local function lsub(a, b)  -- limb arrays, a >= b; the result without leading zeros
    local r, borrow = {}, 0
    for i = 1, #a do
      local s = a[i] - (b[i] or 0) - borrow
      if s < 0 then r[i] = s + BASE; borrow = 1 else r[i] = s; borrow = 0 end
    end
    local n = #r
    while n > 0 and r[n] == 0 do r[n] = nil; n = n - 1 end
    return r
  end

  local function cmp(a, b)
    local ta, tb = type(a) == "table", type(b) == "table"
    if not ta and not tb then
      if a == b then return 0 end
      return a < b and -1 or 1
    end
    if not ta then return -1 end  -- a number is below every bignum
    if not tb then return 1 end
    return lcmp(a, b)
  end

  local function add(a, b)
    if type(a) == "number" and type(b) == "number" then
      local s = a + b
      if s < EXACT then return s end
    end
    a, b = limbs(a), limbs(b)
    local r, carry = {}, 0
    local n = #a
    if #b > n then n = #b end
    for i = 1, n do
      local s = (a[i] or 0) + (b[i] or 0) + carry
      if s >= BASE then r[i] = s - BASE; carry = 1 else r[i] = s; carry = 0 end
    end
    if carry > 0 then r[n + 1] = carry end
    return norm(r)
  end

  local function sub(a, b)  -- a >= b
    if type(a) == "number" then return a - b end  -- then b is a number too
    return norm(lsub(a, limbs(b)))
  end

  local function mul(a, b)
    if type(a) == "number" and type(b) == "number" then
      local p = a * b
      if p < EXACT then return p end  -- a product at or above 2^53 never rounds below it
    end
    a, b = limbs(a), limbs(b)
    local na, nb = #a, #b
    if na == 0 or nb == 0 then return 0 end
    local r = {}
    for i = 1, na + nb do r[i] = 0 end
    for i = 1, na do
      local ai, carry = a[i], 0
      if ai ~= 0 then
        for j = 1, nb do
          local s = r[i + j - 1] + ai * b[j] + carry
          local lo = math.fmod(s, BASE)
          r[i + j - 1] = lo
          carry = (s - lo) / BASE
        end
        local k = i + nb
        while carry > 0 do
          local s = r[k] + carry
          local lo = math.fmod(s, BASE)
          r[k] = lo
          carry = (s - lo) / BASE
          k = k + 1
        end
      end
    end
    return norm(r)
  end

  local function approx(a)
    local f = 0
    for i = #a, 1, -1 do f = f * BASE + a[i] end
    return f
  end

  -- floor(a / b) and a mod b, b > 0. Numbers: fmod is exact. Bignums: schoolbook division one base-10^7 digit at a
  -- time; each digit is estimated in floating point (relative error ~1e-15, so off by at most one) and corrected.
  local function divmod(a, b)
    if type(a) == "number" then
      if type(b) == "table" then return 0, a end
      local r = math.fmod(a, b)
      return (a - r) / b, r
    end
    if cmp(a, b) < 0 then return 0, a end
    b = limbs(b)
    local q = {}
    if #b == 1 then
      local d, rem = b[1], 0
      for i = #a, 1, -1 do
        local cur = rem * BASE + a[i]
        rem = math.fmod(cur, d)
        q[i] = (cur - rem) / d
      end
      return norm(q), rem
    end
    local r = {}
    local bf = approx(b)
    for i = #a, 1, -1 do
      if #r > 0 or a[i] ~= 0 then table.insert(r, 1, a[i]) end
      local qd = 0
      if lcmp(r, b) >= 0 then
        qd = math.floor(approx(r) / bf)
        if qd >= BASE then qd = BASE - 1 end
        local p = limbs(mul(b, qd))
        while lcmp(p, r) > 0 do qd = qd - 1; p = lsub(p, b) end
        r = lsub(r, p)
        while lcmp(r, b) >= 0 do qd = qd + 1; r = lsub(r, b) end
      end
      q[i] = qd
    end
    return norm(q), norm(r)
  end

  local function div(a, b) local q = divmod(a, b); return q end
  local function ceildiv(a, b)
    local q, r = divmod(a, b)
    if cmp(r, 0) > 0 then q = add(q, 1) end
    return q
  end

  local ZERO, ONE, TWO = 0, 1, 2

  -- The four algorithms, as in fastguard/_pure/algorithms.py. Each takes (limit, words, now) with words rolled to now.
  -- limit: {C = count, P = period, and per algorithm derived constants}; words: a list of bignums.
  local ALG = {}

  ALG.f = {
    n = 2,
    roll = function(L, w, now)
      local win = div(now, L.P)
      if w and cmp(w[1], win) == 0 then return {w[1], w[2]} end
      return {win, ZERO}
    end,
    admits = function(L, w, now, k) return cmp(add(w[2], k), L.C) <= 0 end,
    consume = function(L, w, now, k) return {w[1], add(w[2], k)} end,
    remaining = function(L, w, now) return sub(L.C, w[2]) end,
    reset_after = function(L, w, now)
      if w[2] == 0 then return ZERO end
      return sub(mul(add(w[1], ONE), L.P), now)
    end,
    retry_after = function(L, w, now, k) return sub(mul(add(w[1], ONE), L.P), now) end,
  }

  local function sliding_e(L, w, now) return sub(now, mul(w[1], L.P)) end
  local function sliding_wp(L, w, now)  -- prev * (P - e)
    return mul(w[3], sub(L.P, sliding_e(L, w, now)))
  end

  ALG.s = {
    n = 3,
    roll = function(L, w, now)
      local win = div(now, L.P)
      if w then
        local c = cmp(w[1], win)
        if c == 0 then return {w[1], w[2], w[3]} end
        if cmp(add(w[1], ONE), win) == 0 then return {win, ZERO, w[2]} end
      end
      return {win, ZERO, ZERO}
    end,
    admits = function(L, w, now, k)
      return cmp(add(sliding_wp(L, w, now), mul(add(w[2], k), L.P)), L.CP) <= 0
    end,
    consume = function(L, w, now, k) return {w[1], add(w[2], k), w[3]} end,
    remaining = function(L, w, now)
      local used = add(sliding_wp(L, w, now), mul(w[2], L.P))
      if cmp(used, L.CP) >= 0 then return ZERO end
      return div(sub(L.CP, used), L.P)
    end,
    reset_after = function(L, w, now)
      if w[2] ~= 0 then return sub(mul(add(w[1], TWO), L.P), now) end
      if w[3] ~= 0 then return sub(mul(add(w[1], ONE), L.P), now) end
      return ZERO
    end,
    retry_after = function(L, w, now, k)
      local rest = sub(L.P, sliding_e(L, w, now))  -- P - e
      local ck = add(w[2], k)
      if cmp(ck, L.C) <= 0 then
        -- later in this window: (P - e) - floor((C - cur - k) * P / prev); prev > 0 since the hit was refused
        return sub(rest, div(mul(sub(L.C, ck), L.P), w[3]))
      end
      -- in the next window: (P - e) + max(0, P - floor((C - k) * P / cur)); cur > C - k >= 0
      local q = div(mul(sub(L.C, k), L.P), w[2])
      if cmp(q, L.P) < 0 then return add(rest, sub(L.P, q)) end
      return rest
    end,
  }

  local function bucket_deficit(L, w, now)  -- max(0, (full_at - now) * C + frac)
    if cmp(w[1], now) < 0 then return ZERO end
    return add(mul(sub(w[1], now), L.C), w[2])
  end

  ALG.b = {
    n = 2,
    roll = function(L, w, now)
      if w then return {w[1], w[2]} end
      return {ZERO, ZERO}
    end,
    admits = function(L, w, now, k) return cmp(add(bucket_deficit(L, w, now), mul(k, L.P)), L.CP) <= 0 end,
    consume = function(L, w, now, k)
      local q, r = divmod(add(bucket_deficit(L, w, now), mul(k, L.P)), L.C)
      return {add(now, q), r}
    end,
    remaining = function(L, w, now) return div(sub(L.CP, bucket_deficit(L, w, now)), L.P) end,
    reset_after = function(L, w, now) return ceildiv(bucket_deficit(L, w, now), L.C) end,
    retry_after = function(L, w, now, k)
      -- ceil((D - (C - k) * P) / C), positive since the hit was refused
      return ceildiv(sub(bucket_deficit(L, w, now), mul(sub(L.C, k), L.P)), L.C)
    end,
  }

  local function gcra_d(w, now)
    if cmp(w[1], now) > 0 then return sub(w[1], now) end
    return ZERO
  end

  ALG.g = {
    n = 1,
    roll = function(L, w, now)
      if w then return {w[1]} end
      return {ZERO}
    end,
    admits = function(L, w, now, k) return cmp(add(gcra_d(w, now), mul(k, L.T)), L.L) <= 0 end,
    consume = function(L, w, now, k) return {add(add(now, gcra_d(w, now)), mul(k, L.T))} end,
    remaining = function(L, w, now) return div(sub(L.L, gcra_d(w, now)), L.T) end,
    reset_after = function(L, w, now) return gcra_d(w, now) end,
    retry_after = function(L, w, now, k) return sub(add(gcra_d(w, now), mul(k, L.T)), L.L) end,
  }

  -- ---------------------------------------------------------------------------------------------------------------
  local alg = ALG[code]
  local clock = add(mul(now_s, 1000000000), now_n)
  local limits = {}
  for i = 1, nlim do
    local at = 11 + 4 * (i - 1)
    local L = {C = big(ARGV[at]), P = big(ARGV[at + 1]), T = big(ARGV[at + 2]), L = big(ARGV[at + 3])}
    L.CP = mul(L.C, L.P)
    limits[i] = L
  end

  local function decide(key, k, reply)
    local left = ban_left(key)
    if left > 0 then
      banned_reply(reply, #reply, left, false)
      return
    end
    local now = clock
    -- The stored state, if any: touched, then alg.n words per limit.
    local stored = redis.call("GET", key)
    local words = nil
    if stored then
      local nums = {}
      for tok in string.gmatch(stored, "%d+") do nums[#nums + 1] = big(tok) end
      words = {}
      for i = 1, nlim do
        local w = {}
        for j = 1, alg.n do w[j] = nums[1 + (i - 1) * alg.n + j] end
        words[i] = w
      end
      -- time went backwards for this key: decide as if no time had passed
      if cmp(nums[1], now) > 0 then now = nums[1] end
    end

    local rolled, admits, allowed = {}, {}, true
    for i = 1, nlim do
      rolled[i] = alg.roll(limits[i], words and words[i], now)
      admits[i] = alg.admits(limits[i], rolled[i], now, k)
      if not admits[i] then allowed = false end
    end
    local after = rolled
    if allowed and commit then
      after = {}
      for i = 1, nlim do after[i] = alg.consume(limits[i], rolled[i], now, k) end
    end

    local remainings, best = {}, 1
    for i = 1, nlim do
      remainings[i] = alg.remaining(limits[i], after[i], now)
      if i > 1 then
        local c = cmp(remainings[i], remainings[best])
        if c < 0 or (c == 0 and cmp(limits[i].P, limits[best].P) > 0) then best = i end
      end
    end

    local retry, never = ZERO, false
    if not allowed then
      for i = 1, nlim do
        if not admits[i] then
          if cmp(k, limits[i].C) > 0 then
            never = true
          else
            local r = alg.retry_after(limits[i], rolled[i], now, k)
            if cmp(r, retry) > 0 then retry = r end
          end
        end
      end
    end

    -- A denied newcomer leaves nothing behind; a denied known key only moves its touched time.
    if commit and (stored or allowed) then
      local out = {str(now)}
      local keep = allowed and after or words
      for i = 1, nlim do
        for j = 1, alg.n do out[#out + 1] = str(keep[i][j]) end
      end
      redis.call("SET", key, table.concat(out, " "), "PX", ttl)
    end
    if commit and not allowed and count_denial(key) then
      banned_reply(reply, #reply, ban_for, true)
      return
    end

    reply[#reply + 1] = allowed and 1 or 0
    reply[#reply + 1] = best
    reply[#reply + 1] = str(alg.reset_after(limits[best], after[best], now))
    reply[#reply + 1] = never and "-1" or str(retry)
    for i = 1, nlim do reply[#reply + 1] = str(remainings[i]) end
  end

  for i = 1, #KEYS do decide(KEYS[i], big(ARGV[10 + 4 * nlim + i]), reply) end

end
return reply
