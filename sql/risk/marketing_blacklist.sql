-- name = "marketing_blacklist"
-- family = "risk"
-- description = "Excluded from marketing: the customer has refund_risk, low_credit or shared_device. Computed from those tags, not from events."
-- depends_on = ["refund_risk", "low_credit", "shared_device"]
-- scope = "customer"
-- [checks]
-- accepted_values = ["true"]
WITH flagged_customers AS (
    SELECT customer_id FROM refund_risk
    UNION ALL
    SELECT customer_id FROM low_credit
    UNION ALL
    SELECT customer_id FROM shared_device
)
SELECT customer_id, 'true' AS value, CAST(NULL AS DOUBLE) AS score
FROM flagged_customers
GROUP BY customer_id
