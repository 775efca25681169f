-- name = "rfm_tier"
-- family = "behaviour"
-- description = "Fan tier: champion, devoted, big_spender, casual or prospect, from order frequency and spend of the last 365 days. Score: monetary_365."
-- inputs = ["customer_measures", "spend_threshold"]
-- scope = "customer"
-- [params]
-- # orders_365 at or above this is high frequency
-- high_frequency_orders = 3
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["champion", "devoted", "big_spender", "casual", "prospect"]
WITH customer_flags AS (
    SELECT
        c.customer_id,
        c.orders_all,
        c.monetary_365,
        c.orders_365 >= {{high_frequency_orders}} AS high_frequency,
        -- no buyers means no threshold, and nobody is high monetary
        COALESCE(c.monetary_365 >= t.threshold, FALSE) AS high_monetary
    FROM customer_measures c
    -- spend_threshold has one row: the bar over every buyer (see spend_threshold.sql)
    CROSS JOIN spend_threshold t
)
SELECT
    customer_id,
    CASE
        WHEN orders_all = 0 THEN 'prospect'
        WHEN high_frequency AND high_monetary THEN 'champion'
        WHEN high_frequency THEN 'devoted'
        WHEN high_monetary THEN 'big_spender'
        ELSE 'casual'
    END AS value,
    CAST(monetary_365 AS DOUBLE) AS score
FROM customer_flags
