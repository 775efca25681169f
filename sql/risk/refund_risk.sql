-- name = "refund_risk"
-- family = "risk"
-- description = "2+ orders refunded in the last 365 days (refund time: the order's earliest refunded event) and refunds / max(orders_365, 1) >= 0.3. Score: that ratio."
-- inputs = ["order_refunds", "customer_measures"]
-- scope = "customer"
-- [params]
-- window_days = 365
-- min_refunds = 2
-- min_ratio = 0.3
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["true"]
WITH recent_refunds AS (
    SELECT customer_id, COUNT(*) AS refunds
    FROM order_refunds
    WHERE refund_day > {{as_of_day}} - {{window_days}}
    GROUP BY customer_id
),
refund_ratio AS (
    SELECT
        r.customer_id,
        r.refunds,
        CAST(r.refunds AS DOUBLE) / GREATEST(COALESCE(c.orders_365, 0), 1) AS ratio
    FROM recent_refunds r
    LEFT JOIN customer_measures c ON c.customer_id = r.customer_id
)
SELECT customer_id, 'true' AS value, ratio AS score
FROM refund_ratio
WHERE refunds >= {{min_refunds}} AND ratio >= {{min_ratio}}
