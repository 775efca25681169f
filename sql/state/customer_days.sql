-- name = "customer_days"
-- kind = "state"
-- description = "Per customer and event day, the last 30 days: product views, cart adds, value of the cart adds (quantity x unit_price, null price counts 0; exact decimal), cancelled or failed-payment order events."
-- inputs = ["clicks", "carts", "orders"]
-- key = ["customer_id", "event_day"]
-- day_column = "event_day"
-- [merge]
-- product_views = "sum"
-- cart_adds = "sum"
-- cart_add_value = "sum"
-- failed_orders = "sum"
-- [params]
-- # must cover the longest window read from this table (30: engagement, low_credit)
-- retain_days = 30
WITH day_signals AS (
    SELECT customer_id, event_day, 1 AS product_views, 0 AS cart_adds, CAST(NULL AS DOUBLE) AS cart_add_value, 0 AS failed_orders
    FROM clicks
    WHERE page_type = 'product'
    UNION ALL
    SELECT customer_id, event_day, 0, 1, quantity * COALESCE(unit_price, 0.0), 0
    FROM carts
    WHERE action = 'add'
    UNION ALL
    SELECT customer_id, event_day, 0, 0, CAST(NULL AS DOUBLE), 1
    FROM orders
    WHERE status IN ('cancelled', 'payment_failed')
)
SELECT
    customer_id,
    event_day,
    SUM(product_views) AS product_views,
    SUM(cart_adds) AS cart_adds,
    -- rounded to 1e-9 per add, then summed exactly: the same total whatever the batches
    SUM(CAST(cart_add_value AS DECIMAL(38, 9))) AS cart_add_value,
    SUM(failed_orders) AS failed_orders
FROM day_signals
GROUP BY customer_id, event_day
