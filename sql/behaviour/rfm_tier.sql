-- name = "rfm_tier"
-- family = "behaviour"
-- description = "Fan tier: champion, devoted, big_spender, casual or prospect, from order frequency and spend of the last 365 days. Score: monetary_365."
-- inputs = ["customer_measures"]
-- [params]
-- # orders_365 at or above this is high frequency
-- high_frequency_orders = 3
-- # monetary_365 at or above this nearest-rank percentile (over customers with orders_365 >= 1) is high monetary
-- high_monetary_percentile = 80
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["champion", "devoted", "big_spender", "casual", "prospect"]
WITH buyers_by_spend AS (
    SELECT
        monetary_365,
        ROW_NUMBER() OVER (ORDER BY monetary_365) AS spend_rank,
        COUNT(*) OVER () AS buyers
    FROM customer_measures
    WHERE orders_365 >= 1
),
high_spend_threshold AS (
    -- nearest rank: the value at 1-based position ceil(p / 100 * n), in exact integer arithmetic
    SELECT MAX(monetary_365) AS threshold
    FROM buyers_by_spend
    WHERE spend_rank = (buyers * {{high_monetary_percentile}} + 99) / 100
),
customer_flags AS (
    SELECT
        c.customer_id,
        c.orders_all,
        c.monetary_365,
        c.orders_365 >= {{high_frequency_orders}} AS high_frequency,
        -- no buyers means no threshold, and nobody is high monetary
        COALESCE(c.monetary_365 >= t.threshold, FALSE) AS high_monetary
    FROM customer_measures c
    CROSS JOIN high_spend_threshold t
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
