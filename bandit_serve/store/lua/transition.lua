-- Change an experiment's control state if nobody changed it since the caller read it.
-- KEYS: ctl, events (stream), totals, since, due (of the current epoch).
-- ARGV: expected version, events_max, now (seconds, text), mark_restore arm ("" for
--       none), new_epoch ("1" or "0"), old epoch's retention (ms), number of control
--       fields, then field, value pairs, then per event: kind, actor, reason, arm ("" for
--       none), details (JSON).
-- The script owns "version" (expected + 1) and "epoch" (+1 on new_epoch): values given
-- for them are ignored. Returns {0} when the version moved on, else {1, event ids...}.
local ctl, stream, totals, since, due = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local version = tonumber(redis.call('HGET', ctl, 'version') or '0')
if version ~= tonumber(ARGV[1]) then
  return {0}
end
local epoch = tonumber(redis.call('HGET', ctl, 'epoch') or '0')
local n = tonumber(ARGV[7])
local fields = {}
for i = 0, n - 1 do
  local k, v = ARGV[8 + 2 * i], ARGV[9 + 2 * i]
  if k ~= 'version' and k ~= 'epoch' then
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
end
if ARGV[5] == '1' then
  epoch = epoch + 1
  local keep = tonumber(ARGV[6])
  for _, key in ipairs({totals, since, due}) do
    redis.call('PEXPIRE', key, keep)
  end
end
redis.call('DEL', ctl)
fields[#fields + 1] = 'version'
fields[#fields + 1] = string.format('%d', version + 1)
fields[#fields + 1] = 'epoch'
fields[#fields + 1] = string.format('%d', epoch)
redis.call('HSET', ctl, unpack(fields))
local arm = ARGV[4]
if arm ~= '' and ARGV[5] ~= '1' then
  local prefix = arm .. '/'
  local old = redis.call('HKEYS', since)
  for _, f in ipairs(old) do
    if string.sub(f, 1, #prefix) == prefix then
      redis.call('HDEL', since, f)
    end
  end
  local cur = redis.call('HGETALL', totals)
  for i = 1, #cur, 2 do
    redis.call('HSET', since, prefix .. cur[i], cur[i + 1])
  end
end
local ids = {1}
local first = 8 + 2 * n
for i = first, #ARGV, 5 do
  ids[#ids + 1] = redis.call('XADD', stream, 'MAXLEN', ARGV[2], '*',
    'time', ARGV[3], 'kind', ARGV[i], 'actor', ARGV[i + 1], 'reason', ARGV[i + 2],
    'arm', ARGV[i + 3], 'details', ARGV[i + 4])
end
return ids
