-- name = "customer_measures"
-- kind = "measure"
-- description = "One row per customer of the universe (anyone with a counted event): first/last seen, orders_all, orders_365, monetary_365, product_views_30, cart_adds_30."
-- inputs = ["clicks", "carts", "orders", "paid_orders"]
-- [params]
-- engagement_window_days = 30
WITH all_events AS (
    SELECT customer_id, event_time, event_day FROM clicks
    UNION ALL
    SELECT customer_id, event_time, event_day FROM carts
    UNION ALL
    SELECT customer_id, event_time, event_day FROM orders
),
first_and_last_seen AS (
    SELECT
        customer_id,
        MIN(event_time) AS first_seen,
        MAX(event_time) AS last_seen,
        MIN(event_day) AS first_seen_day,
        MAX(event_day) AS last_seen_day
    FROM all_events
    GROUP BY customer_id
),
purchases AS (
    SELECT
        customer_id,
        COUNT(*) AS orders_all,
        COUNT(*) FILTER (WHERE within_orders_window) AS orders_365,
        SUM(amount) FILTER (WHERE within_orders_window) AS monetary_365
    FROM paid_orders
    GROUP BY customer_id
),
recent_product_views AS (
    SELECT customer_id, COUNT(*) AS product_views_30
    FROM clicks
    WHERE page_type = 'product' AND event_day > {{as_of_day}} - {{engagement_window_days}}
    GROUP BY customer_id
),
recent_cart_adds AS (
    SELECT customer_id, COUNT(*) AS cart_adds_30
    FROM carts
    WHERE action = 'add' AND event_day > {{as_of_day}} - {{engagement_window_days}}
    GROUP BY customer_id
)
SELECT
    s.customer_id,
    s.first_seen,
    s.last_seen,
    s.first_seen_day,
    s.last_seen_day,
    COALESCE(p.orders_all, 0) AS orders_all,
    COALESCE(p.orders_365, 0) AS orders_365,
    COALESCE(p.monetary_365, 0.0) AS monetary_365,
    COALESCE(v.product_views_30, 0) AS product_views_30,
    COALESCE(a.cart_adds_30, 0) AS cart_adds_30
FROM first_and_last_seen s
LEFT JOIN purchases p ON p.customer_id = s.customer_id
LEFT JOIN recent_product_views v ON v.customer_id = s.customer_id
LEFT JOIN recent_cart_adds a ON a.customer_id = s.customer_id
