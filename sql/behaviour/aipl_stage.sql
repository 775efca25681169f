-- name = "aipl_stage"
-- family = "behaviour"
-- description = "Funnel stage: loyalty (2+ paid orders in 365 days), purchase (1), interest (3+ product views or a cart add in 30 days) or awareness."
-- inputs = ["customer_measures"]
-- scope = "customer"
-- [params]
-- loyalty_orders = 2
-- interest_product_views = 3
-- interest_cart_adds = 1
-- [checks]
-- accepted_values = ["awareness", "interest", "purchase", "loyalty"]
SELECT
    customer_id,
    CASE
        WHEN orders_365 >= {{loyalty_orders}} THEN 'loyalty'
        WHEN orders_365 >= 1 THEN 'purchase'
        WHEN product_views_30 >= {{interest_product_views}}
            OR cart_adds_30 >= {{interest_cart_adds}} THEN 'interest'
        ELSE 'awareness'
    END AS value,
    CAST(NULL AS DOUBLE) AS score
FROM customer_measures
