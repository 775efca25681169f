-- name = "low_credit"
-- family = "risk"
-- description = "At least 3 order events of status cancelled or payment_failed in the last 30 days. Score: their number."
-- inputs = ["customer_days"]
-- [params]
-- window_days = 30
-- min_events = 3
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["true"]
-- # a value of 1000+ customers moving by more than 75% between snapshots is a broken job, not a trend
-- [checks.drift]
-- max_change_pct = 75
-- min_base = 1000
WITH recent_failed_orders AS (
    SELECT customer_id, SUM(failed_orders) AS failures
    FROM customer_days
    WHERE event_day > {{as_of_day}} - {{window_days}}
    GROUP BY customer_id
)
SELECT customer_id, 'true' AS value, CAST(failures AS DOUBLE) AS score
FROM recent_failed_orders
WHERE failures >= {{min_events}}
