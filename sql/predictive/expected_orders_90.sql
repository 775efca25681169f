-- name = "expected_orders_90"
-- family = "predictive"
-- description = "BG/NBD expected repeat purchase days in the next 90 days of a customer with a paid order before today: high (>= 1), medium (>= 0.3) or low. Score: that expectation. Refreshes once per UTC day."
-- inputs = ["repeat_purchases", "purchase_model"]
-- scope = "customer"
-- [params]
-- horizon_days = 90
-- high_from = 1.0
-- medium_from = 0.3
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["high", "medium", "low"]
WITH expected_purchases AS (
    SELECT
        p.customer_id,
        bgnbd_expected(m.r, m.alpha, m.a, m.b, p.x, p.t_x, p.t_c, {{horizon_days}}) AS e90
    FROM repeat_purchases p
    -- purchase_model has one row: the fit over every customer (see purchase_model.sql)
    CROSS JOIN purchase_model m
    WHERE m.status = 'fitted'
)
SELECT
    customer_id,
    CASE
        WHEN e90 >= {{high_from}} THEN 'high'
        WHEN e90 >= {{medium_from}} THEN 'medium'
        ELSE 'low'
    END AS value,
    e90 AS score
FROM expected_purchases
