-- name = "customer_channel_days"
-- kind = "state"
-- description = "Per customer, click channel (null ignored) and event day, the last 30 days: clicks."
-- inputs = ["clicks"]
-- key = ["customer_id", "channel", "event_day"]
-- day_column = "event_day"
-- [merge]
-- clicks = "sum"
-- [params]
-- # must cover the preferred_channel window
-- retain_days = 30
SELECT customer_id, channel, event_day, COUNT(*) AS clicks
FROM clicks
WHERE channel IS NOT NULL
GROUP BY customer_id, channel, event_day
