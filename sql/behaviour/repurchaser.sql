-- name = "repurchaser"
-- family = "behaviour"
-- description = "Paid orders of the last 365 days fall in at least 3 distinct UTC calendar months. Score: the number of months."
-- inputs = ["paid_orders"]
-- [params]
-- min_months = 3
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["true"]
-- # a value of 1000+ customers moving by more than 75% between snapshots is a broken job, not a trend
-- [checks.drift]
-- max_change_pct = 75
-- min_base = 1000
WITH recent_order_months AS (
    SELECT DISTINCT customer_id, date_trunc('month', paid_time) AS paid_month
    FROM paid_orders
    WHERE within_orders_window
),
months_per_customer AS (
    SELECT customer_id, COUNT(*) AS months
    FROM recent_order_months
    GROUP BY customer_id
)
SELECT customer_id, 'true' AS value, CAST(months AS DOUBLE) AS score
FROM months_per_customer
WHERE months >= {{min_months}}
