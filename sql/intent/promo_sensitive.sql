-- name = "promo_sensitive"
-- family = "intent"
-- description = "2+ paid orders in 365 days and at least half of them discounted (discount_amount > 0). Score: the discounted share."
-- inputs = ["paid_orders", "customer_measures"]
-- scope = "customer"
-- [params]
-- min_orders = 2
-- min_share = 0.5
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["true"]
WITH discounted_orders AS (
    SELECT customer_id, COUNT(*) AS discounted
    FROM paid_orders
    WHERE within_orders_window AND discount_amount > 0
    GROUP BY customer_id
),
discount_share AS (
    SELECT
        c.customer_id,
        c.orders_365,
        CAST(COALESCE(d.discounted, 0) AS DOUBLE) / c.orders_365 AS share
    FROM customer_measures c
    LEFT JOIN discounted_orders d ON d.customer_id = c.customer_id
    WHERE c.orders_365 >= {{min_orders}}
)
SELECT customer_id, 'true' AS value, share AS score
FROM discount_share
WHERE share >= {{min_share}}
