-- name = "task_results"
-- kind = "measure"
-- publish = "task_results"
-- description = "Did a marketing task work (任务转化分析): one row per task with a `sent` touch: its type and first send (the earliest sent touch; ties: the smallest event_id), customers sent, replied and ordered, attributed orders and amounts, paid orders and paid amounts. Published as the Delta table task_results."
-- inputs = ["task_customer_results"]
SELECT
    task_id,
    first_value(task_type ORDER BY first_sent ASC, sent_event_id ASC) AS task_type,
    MIN(first_sent) AS first_sent_at,
    COUNT(*) AS sent,
    COUNT(*) FILTER (WHERE replied) AS replied,
    COUNT(*) FILTER (WHERE orders > 0) AS ordered,
    SUM(orders) AS orders,
    CAST(COUNT(*) FILTER (WHERE orders > 0) AS DOUBLE) / COUNT(*) AS order_rate,
    CAST(SUM(order_amount) AS DOUBLE) AS order_amount,
    SUM(paid_orders) AS paid_orders,
    CAST(SUM(paid_amount) AS DOUBLE) AS paid_amount
FROM task_customer_results
GROUP BY task_id
