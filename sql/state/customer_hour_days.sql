-- name = "customer_hour_days"
-- kind = "state"
-- description = "Per customer, event day and UTC hour of the event, the last 30 days: counted click, cart and order events."
-- inputs = ["clicks", "carts", "orders"]
-- key = ["customer_id", "event_day", "event_hour"]
-- day_column = "event_day"
-- [merge]
-- events = "sum"
-- [params]
-- # must cover the active_hour window
-- retain_days = 30
WITH behaviour_events AS (
    SELECT customer_id, event_day, event_time FROM clicks
    UNION ALL
    SELECT customer_id, event_day, event_time FROM carts
    UNION ALL
    SELECT customer_id, event_day, event_time FROM orders
)
SELECT customer_id, event_day, CAST(date_part('hour', event_time) AS INT) AS event_hour, COUNT(*) AS events
FROM behaviour_events
GROUP BY customer_id, event_day, CAST(date_part('hour', event_time) AS INT)
