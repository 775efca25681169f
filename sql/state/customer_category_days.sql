-- name = "customer_category_days"
-- kind = "state"
-- description = "Per customer, category (null ignored) and event day, the last 7 days: product views and cart adds."
-- inputs = ["clicks", "carts"]
-- key = ["customer_id", "category", "event_day"]
-- day_column = "event_day"
-- [merge]
-- product_views = "sum"
-- cart_adds = "sum"
-- [params]
-- # must cover the category_intent window
-- retain_days = 7
WITH category_signals AS (
    SELECT customer_id, category, event_day, 1 AS product_views, 0 AS cart_adds
    FROM clicks
    WHERE page_type = 'product' AND category IS NOT NULL
    UNION ALL
    SELECT customer_id, category, event_day, 0, 1
    FROM carts
    WHERE action = 'add' AND category IS NOT NULL
)
SELECT customer_id, category, event_day, SUM(product_views) AS product_views, SUM(cart_adds) AS cart_adds
FROM category_signals
GROUP BY customer_id, category, event_day
