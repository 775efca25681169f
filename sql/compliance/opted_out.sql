-- name = "opted_out"
-- family = "compliance"
-- description = "The customer's latest consent for channel 'all' (ties: the largest event_id) withdrew it. Applies to anyone with such a consent, in the customer universe or not."
-- inputs = ["customer_consents"]
-- scope = "customer"
-- [checks]
-- accepted_values = ["true"]
SELECT customer_id, 'true' AS value, CAST(NULL AS DOUBLE) AS score
FROM customer_consents
WHERE status = 'withdrawn'
