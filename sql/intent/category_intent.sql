-- name = "category_intent"
-- family = "intent"
-- description = "The category a customer is circling: product views + 3 x cart adds per category in the last 7 days, leaving out categories bought (paid) in those days. Value: the top category (ties: smallest) if its points reach 5. Score: the points."
-- inputs = ["customer_category_days", "paid_orders"]
-- scope = "customer"
-- [params]
-- window_days = 7
-- cart_add_points = 3
-- min_points = 5
-- [checks]
-- not_null = ["score"]
WITH recently_bought AS (
    SELECT DISTINCT customer_id, category
    FROM paid_orders
    WHERE category IS NOT NULL AND paid_day > {{as_of_day}} - {{window_days}}
),
category_points AS (
    SELECT customer_id, category, SUM(product_views + {{cart_add_points}} * cart_adds) AS points
    FROM customer_category_days
    WHERE event_day > {{as_of_day}} - {{window_days}}
    GROUP BY customer_id, category
    -- a category below the threshold is no customer's answer: leave it out early
    HAVING SUM(product_views + {{cart_add_points}} * cart_adds) >= {{min_points}}
),
open_categories AS (
    SELECT p.customer_id, p.category, p.points
    FROM category_points p
    LEFT JOIN recently_bought b ON b.customer_id = p.customer_id AND b.category = p.category
    WHERE b.customer_id IS NULL
),
top_categories AS (
    -- per customer: the category with the most points (ties: the smallest) and its points;
    -- an ordered aggregate, with no join back to the open categories
    SELECT
        customer_id,
        first_value(category ORDER BY points DESC, category ASC) AS category,
        MAX(points) AS points
    FROM open_categories
    GROUP BY customer_id
)
SELECT customer_id, category AS value, CAST(points AS DOUBLE) AS score
FROM top_categories
