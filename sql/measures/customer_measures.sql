-- name = "customer_measures"
-- kind = "measure"
-- description = "One row per customer of the universe (anyone with a counted event): first/last seen, orders_all, orders_365, monetary_365 (exact decimal sum), product_views_30, cart_adds_30."
-- inputs = ["customer_activity", "customer_days", "paid_orders"]
-- scope = "customer"
-- [params]
-- engagement_window_days = 30
WITH purchases AS (
    SELECT
        customer_id,
        COUNT(*) AS orders_all,
        COUNT(*) FILTER (WHERE within_orders_window) AS orders_365,
        -- exact: the same sum whatever order the rows come in
        SUM(CAST(amount AS DECIMAL(38, 9))) FILTER (WHERE within_orders_window) AS monetary_365
    FROM paid_orders
    GROUP BY customer_id
),
recent_engagement AS (
    SELECT customer_id, SUM(product_views) AS product_views_30, SUM(cart_adds) AS cart_adds_30
    FROM customer_days
    WHERE event_day > {{as_of_day}} - {{engagement_window_days}}
    GROUP BY customer_id
)
SELECT
    a.customer_id,
    a.first_seen,
    a.last_seen,
    a.first_seen_day,
    a.last_seen_day,
    COALESCE(p.orders_all, 0) AS orders_all,
    COALESCE(p.orders_365, 0) AS orders_365,
    COALESCE(p.monetary_365, CAST(0 AS DECIMAL(38, 9))) AS monetary_365,
    COALESCE(e.product_views_30, 0) AS product_views_30,
    COALESCE(e.cart_adds_30, 0) AS cart_adds_30
FROM customer_activity a
LEFT JOIN purchases p ON p.customer_id = a.customer_id
LEFT JOIN recent_engagement e ON e.customer_id = a.customer_id
