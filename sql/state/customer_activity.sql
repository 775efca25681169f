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
    SELECT customer_id, event_time, event_day FROM clicks
    UNION ALL
    SELECT customer_id, event_time, event_day FROM carts
    UNION ALL
    SELECT customer_id, event_time, event_day FROM orders
),
first_and_last_seen AS (
    SELECT
        customer_id,
        MIN(event_time) AS first_seen,
        MIN(event_day) AS first_seen_day,
        MAX(event_time) AS last_seen,
        MAX(event_day) AS last_seen_day
    FROM all_events
    GROUP BY customer_id
),
latest_cart_add AS (
    SELECT customer_id, MAX(event_time) AS last_cart_add, MAX(event_day) AS last_cart_add_day
    FROM carts
    WHERE action = 'add'
    GROUP BY customer_id
),
latest_placed_or_paid AS (
    SELECT customer_id, MAX(event_time) AS last_placed_or_paid
    FROM orders
    WHERE status IN ('placed', 'paid')
    GROUP BY customer_id
)
SELECT
    s.customer_id,
    s.first_seen,
    s.first_seen_day,
    s.last_seen,
    s.last_seen_day,
    c.last_cart_add,
    c.last_cart_add_day,
    o.last_placed_or_paid
FROM first_and_last_seen s
LEFT JOIN latest_cart_add c ON c.customer_id = s.customer_id
LEFT JOIN latest_placed_or_paid o ON o.customer_id = s.customer_id
