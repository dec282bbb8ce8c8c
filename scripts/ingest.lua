-- wrk script of scripts/load-ingest.sh: POSTs Sticky Cards CardScannedEvent
-- webhooks whose bodies differ on every request and in every run (a run
-- nonce from the clock and a random draw, a per-thread counter), so each is
-- a new event for mapper's de-duplication, never a "200 duplicate".
-- Customers are drawn from a pool, so some have several events waiting.

local customers = tonumber(os.getenv("INGEST_CUSTOMERS") or "5000")
local threads = {}
local counter = 0
local nonce

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  -- os.time() alone repeats within a second; the address of a fresh table
  -- differs between runs and threads.
  math.randomseed(os.time() + id * 7919 + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  nonce = string.format("%d%06d", os.time(), math.random(0, 999999))
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local customer = math.random(1, customers)
  local body = string.format(
    '{"event_type":"CardScannedEvent","timestamp":"2025-03-10 09:15:02",' ..
    '"customer_id":"cus_%d","card_id":"card_%s_%d_%d","email":"c%d@example.com",' ..
    '"phone_number":"+1415555%04d","first_name":"Ana","last_name":"Lima",' ..
    '"card":{"id":"card_%s_%d_%d","status":"installed","balance":%d,' ..
    '"installed_date":"2025-03-03T14:10:45Z"},"last_activity":"2025-03-10 09:15:02",' ..
    '"segments":["Regulars"]}',
    customer, nonce, id, counter, customer, customer % 10000,
    nonce, id, counter, counter % 500)
  return wrk.format(nil, nil, nil, body)
end
