-- name = "spend_threshold"
-- kind = "measure"
-- description = "One row: the nearest-rank percentile of monetary_365 over the customers with orders_365 >= 1 (null without buyers), rfm_tier's high-monetary bar. A figure of the whole population: a micro-batch re-evaluates rfm_tier for everyone only when it moves."
-- inputs = ["customer_measures"]
-- [params]
-- # monetary_365 at or above this nearest-rank percentile (over customers with orders_365 >= 1) is high monetary
-- high_monetary_percentile = 80
SELECT
    -- nearest rank: the value at 1-based position ceil(p / 100 * n) of the buyers' spend in
    -- ascending order, chosen in one pass (`nearest_rank`, a tagflow function), no sort
    nearest_rank(monetary_365, {{high_monetary_percentile}}) AS threshold
FROM customer_measures
WHERE orders_365 >= 1
