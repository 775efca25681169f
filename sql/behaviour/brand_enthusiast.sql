-- name = "brand_enthusiast"
-- family = "behaviour"
-- description = "With 3+ paid orders in 365 days, the brand of the most of them (ties: smallest brand) if it has at least 60% of them. Value: the brand. Score: its share."
-- inputs = ["paid_orders"]
-- [params]
-- min_orders = 3
-- min_share = 0.6
-- [checks]
-- not_null = ["score"]
-- # a value of 1000+ customers moving by more than 75% between snapshots is a broken job, not a trend
-- [checks.drift]
-- max_change_pct = 75
-- min_base = 1000
WITH window_orders AS (
    SELECT customer_id, brand
    FROM paid_orders
    WHERE within_orders_window
),
orders_per_customer AS (
    SELECT customer_id, COUNT(*) AS orders_365
    FROM window_orders
    GROUP BY customer_id
    HAVING COUNT(*) >= {{min_orders}}
),
orders_per_brand AS (
    SELECT o.customer_id, o.brand, COUNT(*) AS brand_orders
    FROM window_orders o
    JOIN orders_per_customer c ON c.customer_id = o.customer_id
    WHERE o.brand IS NOT NULL
    GROUP BY o.customer_id, o.brand
),
top_brand_orders AS (
    SELECT customer_id, MAX(brand_orders) AS brand_orders
    FROM orders_per_brand
    GROUP BY customer_id
),
top_brand AS (
    -- ties: the smallest brand
    SELECT b.customer_id, MIN(b.brand) AS brand, t.brand_orders
    FROM orders_per_brand b
    JOIN top_brand_orders t ON t.customer_id = b.customer_id AND t.brand_orders = b.brand_orders
    GROUP BY b.customer_id, t.brand_orders
)
SELECT
    t.customer_id,
    t.brand AS value,
    CAST(t.brand_orders AS DOUBLE) / c.orders_365 AS score
FROM top_brand t
JOIN orders_per_customer c ON c.customer_id = t.customer_id
WHERE t.brand_orders >= {{min_share}} * c.orders_365
