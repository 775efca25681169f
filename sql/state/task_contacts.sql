-- name = "task_contacts"
-- kind = "state"
-- description = "One row per marketing task and customer it touched, kept for all time: the customer's first `sent` touch of the task (its time, event id and task type; ties: the smallest event_id) and their latest `replied` touch."
-- inputs = ["touches"]
-- key = ["task_id", "customer_id"]
-- [merge]
-- first_sent = "min"
-- sent_event_id = { first_by = ["first_sent", "sent_event_id"] }
-- task_type = { first_by = ["first_sent", "sent_event_id"] }
-- last_reply = "max"
SELECT
    task_id,
    customer_id,
    CASE WHEN action = 'sent' THEN event_time END AS first_sent,
    CASE WHEN action = 'sent' THEN event_id END AS sent_event_id,
    CASE WHEN action = 'sent' THEN task_type END AS task_type,
    CASE WHEN action = 'replied' THEN event_time END AS last_reply
FROM touches
