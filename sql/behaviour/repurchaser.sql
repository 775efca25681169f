-- name = "repurchaser"
-- family = "behaviour"
-- description = "Paid orders of the last 365 days fall in at least 3 distinct UTC calendar months. Score: the number of months."
-- inputs = ["paid_orders"]
-- scope = "customer"
-- [params]
-- min_months = 3
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["true"]
WITH recent_order_dates AS (
    -- paid_day is the UTC day of paid_time, as days since 1970-01-01
    SELECT customer_id, CAST(paid_day AS DATE) AS paid_date
    FROM paid_orders
    WHERE within_orders_window
),
recent_order_months AS (
    -- the UTC calendar month as year * 12 + month: a date's parts cost less than truncating
    -- a time in its time zone
    SELECT DISTINCT customer_id, date_part('year', paid_date) * 12 + date_part('month', paid_date) AS paid_month
    FROM recent_order_dates
),
months_per_customer AS (
    SELECT customer_id, COUNT(*) AS months
    FROM recent_order_months
    GROUP BY customer_id
)
SELECT customer_id, 'true' AS value, CAST(months AS DOUBLE) AS score
FROM months_per_customer
WHERE months >= {{min_months}}
