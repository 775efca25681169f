-- name = "repeat_purchases"
-- kind = "measure"
-- description = "The BG/NBD purchase summary of every customer with a paid order paid before today (UTC), in whole days: x (repeat purchase days: distinct paid days - 1), t_x (first to last paid day), t_c (first paid day to today)."
-- inputs = ["order_payments"]
-- scope = "customer"
WITH purchase_days AS (
    -- yesterday and earlier only: the predictions refresh once per UTC day
    SELECT DISTINCT customer_id, paid_day
    FROM order_payments
    WHERE paid_day < {{as_of_day}}
)
SELECT
    customer_id,
    COUNT(*) - 1 AS x,
    MAX(paid_day) - MIN(paid_day) AS t_x,
    {{as_of_day}} - MIN(paid_day) AS t_c
FROM purchase_days
GROUP BY customer_id
