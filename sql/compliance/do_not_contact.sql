-- name = "do_not_contact"
-- family = "compliance"
-- description = "Whom a sending tool must leave out: the customer has marketing_blacklist, opted_out or over_contacted. Computed from those tags, not from events."
-- depends_on = ["marketing_blacklist", "opted_out", "over_contacted"]
-- scope = "customer"
-- [checks]
-- accepted_values = ["true"]
WITH excluded_customers AS (
    SELECT customer_id FROM marketing_blacklist
    UNION ALL
    SELECT customer_id FROM opted_out
    UNION ALL
    SELECT customer_id FROM over_contacted
)
SELECT customer_id, 'true' AS value, CAST(NULL AS DOUBLE) AS score
FROM excluded_customers
GROUP BY customer_id
