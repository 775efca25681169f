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
ranked_hours AS (
    SELECT
        customer_id,
        event_hour,
        events,
        SUM(events) OVER (PARTITION BY customer_id) AS all_events,
        ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY events DESC, event_hour ASC) AS hour_rank
    FROM hour_events
)
SELECT customer_id, lpad(CAST(event_hour AS VARCHAR), 2, '0') AS value, CAST(events AS DOUBLE) / all_events AS score
FROM ranked_hours
WHERE hour_rank = 1 AND all_events >= {{min_events}}
