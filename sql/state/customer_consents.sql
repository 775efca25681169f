-- name = "customer_consents"
-- kind = "state"
-- description = "One row per customer with a consent for channel 'all', kept for all time: the status of the latest (ties: the largest event_id)."
-- inputs = ["consents"]
-- key = ["customer_id"]
-- [merge]
-- consent_time = "max"
-- consent_event_id = { last_by = ["consent_time", "consent_event_id"] }
-- status = { last_by = ["consent_time", "consent_event_id"] }
SELECT customer_id, event_time AS consent_time, event_id AS consent_event_id, status
FROM consents
WHERE channel = 'all'
