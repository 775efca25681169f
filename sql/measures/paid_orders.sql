-- name = "paid_orders"
-- kind = "measure"
-- description = "One row per paid order (from the order_payments state). `within_orders_window` marks orders paid in the last `orders_window_days` days (the 365-day window of orders_365)."
-- inputs = ["order_payments"]
-- scope = "customer"
-- [params]
-- orders_window_days = 365
SELECT
    order_id,
    customer_id,
    paid_time,
    paid_day,
    amount,
    discount_amount,
    brand,
    category,
    paid_day > {{as_of_day}} - {{orders_window_days}} AS within_orders_window
FROM order_payments
