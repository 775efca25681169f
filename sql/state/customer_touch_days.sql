-- name = "customer_touch_days"
-- kind = "state"
-- description = "Per customer and event day, the last 7 days: `sent` touches of any task."
-- inputs = ["touches"]
-- key = ["customer_id", "event_day"]
-- day_column = "event_day"
-- [merge]
-- sent = "sum"
-- [params]
-- # must cover the over_contacted window
-- retain_days = 7
SELECT customer_id, event_day, COUNT(*) AS sent
FROM touches
WHERE action = 'sent'
GROUP BY customer_id, event_day
