-- name = "spend_threshold"
-- kind = "measure"
-- description = "One row: the nearest-rank percentile of monetary_365 over the customers with orders_365 >= 1 (null without buyers), rfm_tier's high-monetary bar. A figure of the whole population: a micro-batch re-evaluates rfm_tier for everyone only when it moves."
-- inputs = ["customer_measures"]
-- [params]
-- # monetary_365 at or above this nearest-rank percentile (over customers with orders_365 >= 1) is high monetary
-- high_monetary_percentile = 80
WITH buyers_by_spend AS (
    SELECT
        monetary_365,
        ROW_NUMBER() OVER (ORDER BY monetary_365) AS spend_rank,
        COUNT(*) OVER () AS buyers
    FROM customer_measures
    WHERE orders_365 >= 1
)
-- nearest rank: the value at 1-based position ceil(p / 100 * n), in exact integer arithmetic
SELECT MAX(monetary_365) AS threshold
FROM buyers_by_spend
WHERE spend_rank = (buyers * {{high_monetary_percentile}} + 99) / 100
