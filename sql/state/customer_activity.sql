-- name = "customer_activity"
-- kind = "state"
-- description = "One row per customer of the universe, kept for all time: first and last event over all streams, latest cart add, latest order placed or paid."
-- inputs = ["clicks", "carts", "orders"]
-- key = ["customer_id"]
-- [merge]
-- first_seen = "min"
-- first_seen_day = "min"
-- last_seen = "max"
-- last_seen_day = "max"
-- last_cart_add = "max"
-- last_cart_add_day = "max"
-- last_placed_or_paid = "max"
WITH all_events AS (
    SELECT customer_id, event_time, event_day, false AS is_cart_add, false AS is_placed_or_paid FROM clicks
    UNION ALL
    SELECT customer_id, event_time, event_day, action = 'add', false FROM carts
    UNION ALL
    SELECT customer_id, event_time, event_day, false, status IN ('placed', 'paid') FROM orders
)
-- one pass over the events: the latest cart add and order placed or paid are filtered maxima
SELECT
    customer_id,
    MIN(event_time) AS first_seen,
    MIN(event_day) AS first_seen_day,
    MAX(event_time) AS last_seen,
    MAX(event_day) AS last_seen_day,
    MAX(event_time) FILTER (WHERE is_cart_add) AS last_cart_add,
    MAX(event_day) FILTER (WHERE is_cart_add) AS last_cart_add_day,
    MAX(event_time) FILTER (WHERE is_placed_or_paid) AS last_placed_or_paid
FROM all_events
GROUP BY customer_id
