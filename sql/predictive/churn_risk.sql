-- name = "churn_risk"
-- family = "predictive"
-- description = "BG/NBD probability that a customer with a paid order before today is still a customer: likely_active (>= 0.7), at_risk (>= 0.3) or likely_lost. Score: p_alive. Refreshes once per UTC day."
-- inputs = ["purchase_predictions"]
-- scope = "customer"
-- [params]
-- active_from = 0.7
-- at_risk_from = 0.3
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["likely_active", "at_risk", "likely_lost"]
SELECT
    customer_id,
    CASE
        WHEN p_alive >= {{active_from}} THEN 'likely_active'
        WHEN p_alive >= {{at_risk_from}} THEN 'at_risk'
        ELSE 'likely_lost'
    END AS value,
    p_alive AS score
FROM purchase_predictions
