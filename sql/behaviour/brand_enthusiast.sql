-- name = "brand_enthusiast"
-- family = "behaviour"
-- description = "With 3+ paid orders in 365 days, the brand of the most of them (ties: smallest brand) if it has at least 60% of them. Value: the brand. Score: its share."
-- inputs = ["paid_orders", "customer_measures"]
-- [params]
-- min_orders = 3
-- min_share = 0.6
-- [checks]
-- not_null = ["score"]
-- # a value of 1000+ customers moving by more than 75% between snapshots is a broken job, not a trend
-- [checks.drift]
-- max_change_pct = 75
-- min_base = 1000
WITH orders_per_brand AS (
    SELECT customer_id, brand, COUNT(*) AS brand_orders
    FROM paid_orders
    WHERE within_orders_window AND brand IS NOT NULL
    GROUP BY customer_id, brand
),
top_brand AS (
    SELECT
        customer_id,
        brand,
        brand_orders,
        ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY brand_orders DESC, brand ASC) AS brand_rank
    FROM orders_per_brand
)
SELECT
    t.customer_id,
    t.brand AS value,
    CAST(t.brand_orders AS DOUBLE) / c.orders_365 AS score
FROM top_brand t
JOIN customer_measures c ON c.customer_id = t.customer_id
WHERE t.brand_rank = 1
  AND c.orders_365 >= {{min_orders}}
  AND t.brand_orders >= {{min_share}} * c.orders_365
