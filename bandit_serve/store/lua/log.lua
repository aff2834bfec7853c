-- Log decisions with their model calls' outcomes.
-- KEYS: ctl, totals, due (zset of "<event_id>:<arm>" scored by deadline ms), bucket, then
--       one key per event.
-- ARGV: epoch, now_ms, deadline_ms, record_expire_at_ms, bucket_expire_at_ms, expected
--       counts ("arm=x;arm=y": the policy's probabilities summed over these decisions,
--       added to each arm's "psum" for the sample-ratio check), on_model_error ("low" or
--       "withdraw"), error_reward, then per event: arm, propensity, flags ("f": the model
--       call failed; "g": the client went away), latency bin ("" when not timed).
-- A decision whose call succeeded waits for its reward; a failed one is rewarded
-- error_reward at once (low) or withdrawn; one whose client left is withdrawn. Every
-- decision keeps a record, so a retried call is a no-op for an event key that exists.
-- Returns the number of decisions written.
local refused = stale_epoch()
if refused then
  return refused
end
local totals, due, bucket = KEYS[2], KEYS[3], KEYS[4]
local now, deadline = ARGV[2], ARGV[3]
local mode, error_reward = ARGV[7], tonumber(ARGV[8])
local sticky_ms, n_events = ARGV[9], tonumber(ARGV[10])
local first_key, first_arg, per = 5, 11, 7
local first_unit = first_key + n_events
local deltas = new_deltas()
local ustats = new_units()
local fresh = {}
local assigned = {}
for i = first_key, first_unit - 1 do
  local key = KEYS[i]
  if redis.call('EXISTS', key) == 0 and not fresh[key] then
    local a = first_arg + (i - first_key) * per
    local arm, p, flags, bin = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3]
    local ui, assign = tonumber(ARGV[a + 4]), ARGV[a + 5]
    local ukey = false
    if ui > 0 then
      ukey = KEYS[first_unit + ui - 1]
      if assign ~= '0' and not assigned[ukey] then
        local has = redis.call('HEXISTS', ukey, 'arm') == 1
        if assign == '2' or not has then
          assigned[ukey] = {arm, ARGV[a + 1]}
          if not has then
            deltas:add(arm, 'ucount', 1)
            for uarm, v in string.gmatch(ARGV[a + 6], '([^;=]+)=([^;]+)') do
              deltas:add(uarm, 'upsum', tonumber(v))
            end
          end
        end
      end
    end
    local failed, gone = string.find(flags, 'f') ~= nil, string.find(flags, 'g') ~= nil
    local rejected = string.find(flags, 'r') ~= nil
    local st = ST.pending
    deltas:add(arm, 'pulls', 1)
    if bin ~= '' then
      deltas:add(arm, 'calls', 1)
      deltas:add(arm, 'h' .. bin, 1)
    end
    if failed then
      deltas:add(arm, 'errors', 1)
    end
    if rejected then
      deltas:add(arm, 'rejections', 1)
    end
    if gone or rejected or (failed and mode ~= 'low') then
      st = ST.withdrawn
      deltas:add(arm, 'withdrawn', 1)
    elseif failed then
      st = ST.rewarded
      deltas:reward(arm, error_reward, p)
      if ukey then
        ustats:reward(deltas, ukey, arm, error_reward)
      end
    end
    fresh[key] = {arm, ARGV[a + 1], st, ukey}
  end
end
if next(fresh) == nil then  -- a fully retried call adds nothing
  return 0
end
for arm, v in string.gmatch(ARGV[6], '([^;=]+)=([^;]+)') do
  deltas:add(arm, 'psum', tonumber(v))
end
local refused_range = deltas:check_range(totals)
if refused_range then
  return refused_range
end
local written = 0
for ukey, a in pairs(assigned) do
  redis.call('HSET', ukey, 'arm', a[1], 'p', a[2])
  redis.call('PEXPIRE', ukey, sticky_ms)
end
ustats:write()
for key, rec in pairs(fresh) do
  local arm, st = rec[1], rec[3]
  redis.call('HSET', key, 'arm', arm, 'p', rec[2], 't', now, 'dl', deadline, 'st', st)
  if rec[4] then
    redis.call('HSET', key, 'u', rec[4])
  end
  redis.call('PEXPIREAT', key, ARGV[4])
  if st == ST.pending then
    redis.call('ZADD', due, deadline, due_member(key, arm))
  end
  written = written + 1
end
deltas:write(totals, bucket, ARGV[5])
return written
