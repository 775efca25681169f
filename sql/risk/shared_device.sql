-- name = "shared_device"
-- family = "risk"
-- description = "A device the customer used in the last 30 days (any stream) was used by at least 5 distinct customers in those days. Score: the most customers on one of the customer's devices."
-- inputs = ["device_days"]
-- [params]
-- window_days = 30
-- min_customers = 5
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["true"]
-- # a value of 1000+ customers moving by more than 75% between snapshots is a broken job, not a trend
-- [checks.drift]
-- max_change_pct = 75
-- min_base = 1000
WITH device_customers AS (
    SELECT DISTINCT device_id, customer_id
    FROM device_days
    WHERE event_day > {{as_of_day}} - {{window_days}}
),
customers_per_device AS (
    SELECT device_id, COUNT(*) AS customers
    FROM device_customers
    GROUP BY device_id
)
SELECT d.customer_id, 'true' AS value, CAST(MAX(n.customers) AS DOUBLE) AS score
FROM device_customers d
JOIN customers_per_device n ON n.device_id = d.device_id
WHERE n.customers >= {{min_customers}}
GROUP BY d.customer_id
