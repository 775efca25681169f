-- name = "device_days"
-- kind = "state"
-- description = "Which customers used which device on which day (any stream, null device ignored), the last 30 days, with their number of events."
-- inputs = ["clicks", "carts", "orders"]
-- key = ["device_id", "customer_id", "event_day"]
-- day_column = "event_day"
-- [merge]
-- events = "sum"
-- [params]
-- # must cover the shared_device window
-- retain_days = 30
WITH device_use AS (
    SELECT device_id, customer_id, event_day FROM clicks WHERE device_id IS NOT NULL
    UNION ALL
    SELECT device_id, customer_id, event_day FROM carts WHERE device_id IS NOT NULL
    UNION ALL
    SELECT device_id, customer_id, event_day FROM orders WHERE device_id IS NOT NULL
)
SELECT device_id, customer_id, event_day, COUNT(*) AS events
FROM device_use
GROUP BY device_id, customer_id, event_day
