-- name = "shared_device"
-- family = "risk"
-- description = "A device the customer used in the last 30 days (any stream) was used by at least 5 distinct customers in those days. Score: the most customers on one of the customer's devices."
-- inputs = ["device_days"]
-- # a customer's row reads the rows of the devices the customer used: a micro-batch evaluates
-- # the customers sharing a device with a changed customer, not everyone
-- scope = "customer"
-- linked_by = "device_id"
-- [params]
-- window_days = 30
-- min_customers = 5
-- [checks]
-- not_null = ["score"]
-- accepted_values = ["true"]
WITH recent_use AS (
    SELECT device_id, customer_id
    FROM device_days
    WHERE event_day > {{as_of_day}} - {{window_days}}
),
device_customers AS (
    SELECT DISTINCT device_id, customer_id
    FROM recent_use
),
shared_devices AS (
    SELECT device_id, COUNT(*) AS customers
    FROM device_customers
    GROUP BY device_id
    HAVING COUNT(*) >= {{min_customers}}
)
-- the few shared devices first: they are the join's hash table, each device's customers probe it
SELECT d.customer_id, 'true' AS value, CAST(MAX(s.customers) AS DOUBLE) AS score
FROM shared_devices s
JOIN device_customers d ON d.device_id = s.device_id
GROUP BY d.customer_id
