-- name = "brand_enthusiast"
-- family = "behaviour"
-- description = "With 3+ paid orders in 365 days, the brand of the most of them (ties: smallest brand) if it has at least 60% of them. Value: the brand. Score: its share."
-- inputs = ["paid_orders"]
-- scope = "customer"
-- [params]
-- min_orders = 3
-- min_share = 0.6
-- [checks]
-- not_null = ["score"]
WITH brand_orders AS (
    -- paid orders of the window per customer and brand (null: orders without a brand)
    SELECT customer_id, brand, COUNT(*) AS orders
    FROM paid_orders
    WHERE within_orders_window
    GROUP BY customer_id, brand
),
leading_counts AS (
    -- customers with enough orders: every order of the window, and the most any brand has
    SELECT
        customer_id,
        SUM(orders) AS orders_365,
        MAX(orders) FILTER (WHERE brand IS NOT NULL) AS brand_orders
    FROM brand_orders
    GROUP BY customer_id
    HAVING SUM(orders) >= {{min_orders}}
),
dominant_brands AS (
    -- the smallest brand with the most orders, where it holds the required share
    SELECT l.customer_id, MIN(b.brand) AS brand, l.brand_orders, l.orders_365
    FROM leading_counts l
    JOIN brand_orders b ON b.customer_id = l.customer_id AND b.orders = l.brand_orders
    WHERE b.brand IS NOT NULL AND l.brand_orders >= {{min_share}} * l.orders_365
    GROUP BY l.customer_id, l.brand_orders, l.orders_365
)
SELECT customer_id, brand AS value, CAST(brand_orders AS DOUBLE) / orders_365 AS score
FROM dominant_brands
