-- name = "lifecycle"
-- family = "behaviour"
-- description = "new (first seen in the last 30 days), active (seen in the last 30 days), dormant (last 90 days) or churned. Score: whole days since the day last seen."
-- inputs = ["customer_measures"]
-- scope = "customer"
-- [params]
-- new_window_days = 30
-- active_window_days = 30
-- dormant_window_days = 90
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["new", "active", "dormant", "churned"]
SELECT
    customer_id,
    CASE
        WHEN first_seen_day > {{as_of_day}} - {{new_window_days}} THEN 'new'
        WHEN last_seen_day > {{as_of_day}} - {{active_window_days}} THEN 'active'
        WHEN last_seen_day > {{as_of_day}} - {{dormant_window_days}} THEN 'dormant'
        ELSE 'churned'
    END AS value,
    CAST({{as_of_day}} - last_seen_day AS DOUBLE) AS score
FROM customer_measures
