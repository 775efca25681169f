-- name = "cart_abandoner"
-- family = "intent"
-- description = "The latest cart add is in the last 3 days and no order was placed or paid since. Score: value of the cart adds of the last 3 days (quantity x unit_price, null price counts 0)."
-- inputs = ["customer_activity", "customer_days"]
-- scope = "customer"
-- [params]
-- window_days = 3
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["true"]
WITH abandoned_carts AS (
    -- the latest cart add is recent and no order was placed or paid at or after it
    SELECT customer_id
    FROM customer_activity
    WHERE last_cart_add_day > {{as_of_day}} - {{window_days}}
      AND (last_placed_or_paid IS NULL OR last_placed_or_paid < last_cart_add)
),
recent_cart_value AS (
    SELECT customer_id, SUM(cart_add_value) AS cart_value
    FROM customer_days
    WHERE cart_adds > 0 AND event_day > {{as_of_day}} - {{window_days}}
    GROUP BY customer_id
)
SELECT a.customer_id, 'true' AS value, CAST(COALESCE(v.cart_value, 0) AS DOUBLE) AS score
FROM abandoned_carts a
LEFT JOIN recent_cart_value v ON v.customer_id = a.customer_id
