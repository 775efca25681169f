-- name = "over_contacted"
-- family = "compliance"
-- description = "Contacted too often: at least 3 `sent` touches (any task) in the last 7 days. Score: their number."
-- inputs = ["customer_touch_days"]
-- scope = "customer"
-- [params]
-- window_days = 7
-- min_sent = 3
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["true"]
WITH recent_contacts AS (
    SELECT customer_id, SUM(sent) AS sent
    FROM customer_touch_days
    WHERE event_day > {{as_of_day}} - {{window_days}}
    GROUP BY customer_id
)
SELECT customer_id, 'true' AS value, CAST(sent AS DOUBLE) AS score
FROM recent_contacts
WHERE sent >= {{min_sent}}
