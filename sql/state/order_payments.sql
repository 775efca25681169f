-- name = "order_payments"
-- kind = "state"
-- description = "One row per paid order, kept for all time: customer, time, amount, discount, brand and category of the order's earliest `paid` event (ties: smallest event_id)."
-- inputs = ["orders"]
-- key = ["order_id"]
-- [merge]
-- paid_time = "min"
-- paid_day = "min"
-- customer_id = { first_by = ["paid_time", "paid_event_id"] }
-- paid_event_id = { first_by = ["paid_time", "paid_event_id"] }
-- amount = { first_by = ["paid_time", "paid_event_id"] }
-- discount_amount = { first_by = ["paid_time", "paid_event_id"] }
-- brand = { first_by = ["paid_time", "paid_event_id"] }
-- category = { first_by = ["paid_time", "paid_event_id"] }
SELECT
    order_id,
    customer_id,
    event_time AS paid_time,
    event_day AS paid_day,
    event_id AS paid_event_id,
    amount,
    discount_amount,
    brand,
    category
FROM orders
WHERE status = 'paid'
