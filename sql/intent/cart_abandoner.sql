-- name = "cart_abandoner"
-- family = "intent"
-- description = "The latest cart add is in the last 3 days and no order was placed or paid since. Score: value of the cart adds of the last 3 days (quantity x unit_price, null price counts 0)."
-- inputs = ["carts", "orders"]
-- [params]
-- window_days = 3
WITH latest_cart_add AS (
    SELECT customer_id, MAX(event_time) AS added_at, MAX(event_day) AS added_day
    FROM carts
    WHERE action = 'add'
    GROUP BY customer_id
),
ordered_since_add AS (
    SELECT DISTINCT o.customer_id
    FROM orders o
    JOIN latest_cart_add l ON l.customer_id = o.customer_id
    WHERE o.status IN ('placed', 'paid') AND o.event_time >= l.added_at
),
recent_cart_value AS (
    SELECT customer_id, SUM(quantity * COALESCE(unit_price, 0.0)) AS cart_value
    FROM carts
    WHERE action = 'add' AND event_day > {{as_of_day}} - {{window_days}}
    GROUP BY customer_id
)
SELECT l.customer_id, 'true' AS value, COALESCE(v.cart_value, 0.0) AS score
FROM latest_cart_add l
LEFT JOIN ordered_since_add o ON o.customer_id = l.customer_id
LEFT JOIN recent_cart_value v ON v.customer_id = l.customer_id
WHERE l.added_day > {{as_of_day}} - {{window_days}}
  AND o.customer_id IS NULL
