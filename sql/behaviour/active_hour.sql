-- name = "active_hour"
-- family = "behaviour"
-- description = "When to send: with 5+ click, cart and order events in 30 days, the UTC hour of the most of them (ties: the smallest hour). Value: the hour as two digits, 00-23. Score: its share of those events."
-- inputs = ["customer_hour_days"]
-- scope = "customer"
-- [params]
-- window_days = 30
-- min_events = 5
-- [checks]
-- not_null = ["score"]
WITH hour_events AS (
    SELECT customer_id, event_hour, SUM(events) AS events
    FROM customer_hour_days
    WHERE event_day > {{as_of_day}} - {{window_days}}
    GROUP BY customer_id, event_hour
),
top_hours AS (
    -- the hour of the most events (ties: the smallest hour), its events and all of them;
    -- an ordered aggregate per customer, with no sort of the hours
    SELECT
        customer_id,
        first_value(event_hour ORDER BY events DESC, event_hour ASC) AS event_hour,
        MAX(events) AS events,
        SUM(events) AS all_events
    FROM hour_events
    GROUP BY customer_id
)
SELECT customer_id, lpad(CAST(event_hour AS VARCHAR), 2, '0') AS value, CAST(events AS DOUBLE) / all_events AS score
FROM top_hours
WHERE all_events >= {{min_events}}
