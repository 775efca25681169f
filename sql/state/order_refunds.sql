-- name = "order_refunds"
-- kind = "state"
-- description = "One row per refunded order, kept for all time: customer and time of the order's earliest `refunded` event (ties: smallest event_id)."
-- inputs = ["orders"]
-- key = ["order_id"]
-- [merge]
-- refund_time = "min"
-- refund_day = "min"
-- customer_id = { first_by = ["refund_time", "refund_event_id"] }
-- refund_event_id = { first_by = ["refund_time", "refund_event_id"] }
SELECT
    order_id,
    customer_id,
    event_time AS refund_time,
    event_day AS refund_day,
    event_id AS refund_event_id
FROM orders
WHERE status = 'refunded'
