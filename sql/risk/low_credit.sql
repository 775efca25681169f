-- name = "low_credit"
-- family = "risk"
-- description = "At least 3 order events of status cancelled or payment_failed in the last 30 days. Score: their number."
-- inputs = ["customer_days"]
-- scope = "customer"
-- [params]
-- window_days = 30
-- min_events = 3
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["true"]
WITH recent_failed_orders AS (
    SELECT customer_id, SUM(failed_orders) AS failures
    FROM customer_days
    WHERE event_day > {{as_of_day}} - {{window_days}}
    GROUP BY customer_id
)
SELECT customer_id, 'true' AS value, CAST(failures AS DOUBLE) AS score
FROM recent_failed_orders
WHERE failures >= {{min_events}}
