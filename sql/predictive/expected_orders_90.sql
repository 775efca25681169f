-- name = "expected_orders_90"
-- family = "predictive"
-- description = "BG/NBD expected repeat purchase days in the next 90 days of a customer with a paid order before today: high (>= 1), medium (>= 0.3) or low. Score: that expectation. Refreshes once per UTC day."
-- inputs = ["purchase_predictions"]
-- scope = "customer"
-- [params]
-- high_from = 1.0
-- medium_from = 0.3
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["high", "medium", "low"]
SELECT
    customer_id,
    CASE
        WHEN e90 >= {{high_from}} THEN 'high'
        WHEN e90 >= {{medium_from}} THEN 'medium'
        ELSE 'low'
    END AS value,
    e90 AS score
FROM purchase_predictions
