-- Spend one token of a key's bucket (a quota shared by every replica).
-- KEYS: the bucket hash, mark (a key named by a token of this request). ARGV: now_ms,
-- rate (tokens per second), burst (capacity).
-- Returns 0 when a token was spent, else the milliseconds until one is there.
-- Safe to run twice: a spend sets the mark, and a re-send of the same request that finds
-- it answers 0 without spending again.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rec = redis.call('HMGET', KEYS[1], 'tokens', 't')
local tokens, t = tonumber(rec[1] or ARGV[3]), tonumber(rec[2] or ARGV[1])
tokens = math.min(burst, tokens + math.max(0, now - t) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  redis.call('HSET', KEYS[2], 'spent', 1)
  redis.call('PEXPIRE', KEYS[2], 60000)
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 't', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
