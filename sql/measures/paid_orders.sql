-- name = "paid_orders"
-- kind = "measure"
-- description = "One row per paid order. Time, amount, discount, brand and category come from the order's earliest `paid` event (ties: smallest event_id). `within_orders_window` marks orders paid in the last `orders_window_days` days (the 365-day window of orders_365)."
-- inputs = ["orders"]
-- [params]
-- orders_window_days = 365
WITH paid_events AS (
    SELECT
        order_id,
        customer_id,
        event_time,
        event_day,
        amount,
        discount_amount,
        brand,
        category,
        ROW_NUMBER() OVER (PARTITION BY order_id ORDER BY event_time, event_id) AS paid_rank
    FROM orders
    WHERE status = 'paid'
)
SELECT
    order_id,
    customer_id,
    event_time AS paid_time,
    event_day AS paid_day,
    amount,
    discount_amount,
    brand,
    category,
    event_day > {{as_of_day}} - {{orders_window_days}} AS within_orders_window
FROM paid_events
WHERE paid_rank = 1
