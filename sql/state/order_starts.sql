-- name = "order_starts"
-- kind = "state"
-- description = "One row per order, kept for all time: customer, time and amount of the order's earliest event of any status (ties: the smallest event_id), the time an order counts from when a marketing task is judged."
-- inputs = ["orders"]
-- key = ["order_id"]
-- [merge]
-- start_time = "min"
-- customer_id = { first_by = ["start_time", "start_event_id"] }
-- start_event_id = { first_by = ["start_time", "start_event_id"] }
-- amount = { first_by = ["start_time", "start_event_id"] }
SELECT order_id, customer_id, event_time AS start_time, event_id AS start_event_id, amount
FROM orders
