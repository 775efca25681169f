-- name = "task_customer_results"
-- kind = "measure"
-- description = "One row per marketing task and customer with a `sent` touch of it: the first send s (time, event id, task type), whether they replied at or after s, and the orders attributed to the task: orders whose earliest event (any status) falls after s and at most `attribution_days` later, with their amounts, and those of them that are paid orders with their paid amounts."
-- inputs = ["task_contacts", "order_starts", "order_payments"]
-- scope = "customer"
-- [params]
-- attribution_days = 7
WITH sent_contacts AS (
    SELECT task_id, customer_id, first_sent, sent_event_id, task_type, last_reply
    FROM task_contacts
    WHERE first_sent IS NOT NULL
),
attributed_orders AS (
    SELECT
        s.task_id,
        s.customer_id,
        o.amount,
        p.order_id IS NOT NULL AS is_paid,
        p.amount AS paid_amount
    FROM sent_contacts s
    JOIN order_starts o
        ON o.customer_id = s.customer_id
        AND o.start_time > s.first_sent
        AND o.start_time <= s.first_sent + INTERVAL '{{attribution_days}} days'
    LEFT JOIN order_payments p ON p.order_id = o.order_id
),
orders_per_contact AS (
    -- amounts summed exactly: the same totals whatever order the rows come in
    SELECT
        task_id,
        customer_id,
        COUNT(*) AS orders,
        SUM(CAST(amount AS DECIMAL(38, 9))) AS order_amount,
        COUNT(*) FILTER (WHERE is_paid) AS paid_orders,
        SUM(CAST(paid_amount AS DECIMAL(38, 9))) AS paid_amount
    FROM attributed_orders
    GROUP BY task_id, customer_id
)
SELECT
    s.task_id,
    s.customer_id,
    s.first_sent,
    s.sent_event_id,
    s.task_type,
    COALESCE(s.last_reply >= s.first_sent, FALSE) AS replied,
    COALESCE(o.orders, 0) AS orders,
    COALESCE(o.order_amount, CAST(0 AS DECIMAL(38, 9))) AS order_amount,
    COALESCE(o.paid_orders, 0) AS paid_orders,
    COALESCE(o.paid_amount, CAST(0 AS DECIMAL(38, 9))) AS paid_amount
FROM sent_contacts s
LEFT JOIN orders_per_contact o ON o.task_id = s.task_id AND o.customer_id = s.customer_id
